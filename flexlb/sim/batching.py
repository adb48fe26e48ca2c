"""Continuous-batching engine model (vLLM / RTP-LLM style), beside the FIFO one in engine.py.

Pure: no grpc, no asyncio; the caller owns the clock (milliseconds) and the waiting between
iterations, so the mock worker (real sleeps) and the offline simulator (virtual clock) share it.

    engine = BatchingEngine(BatchingParams(), PrefixCache(4096))
    engine.add(Sequence(seq_id=1, prompt_tokens=900, block_keys=keys, max_new_tokens=16, arrival_ms=now))
    it = engine.plan(now)                  # what the next iteration runs and how long it takes (None: idle)
    ...                                    # wait it.duration_ms
    events = engine.complete(it, now + it.duration_ms)   # FirstToken / Token / Finished / Preempted

Each iteration: sequences still in a chunked prefill continue first, then waiting sequences are
admitted strictly in arrival order while the token budget (`max_batch_tokens`, counting one token per
decoding row), the batch size (`max_batch_size` rows running) and the KV cache allow; the head of the
queue that does not fit stops admission (head-of-line wait). Without chunked prefill a prompt is
computed in one iteration, and one larger than the budget is admitted alone when the iteration has no
other prefill. Every decoding row gets one token per iteration (a fused worker decodes in the same
iterations as it prefills). KV is reserved per running sequence in blocks of `block_size_tokens` for
its prompt plus the tokens generated so far, one more block when a decode step crosses a block
boundary; a step that finds no free block preempts the newest running sequence (back to waiting, its
KV dropped, recomputed when admitted again), as vLLM does. With `preempt`, admission also preempts
running sequences that arrived after the head of the queue to make room for it. Prefix-cache hits are
priced as in engine.py: the cached prefix is matched when a sequence is admitted, its blocks are
inserted when its prefill completes, the last prompt token is always computed.

Iteration time = base_ms (+ prefill_base_ms when it computes prompt tokens)
                 + ms_per_prefill_token x uncached prompt tokens computed
                 + ms_per_cached_token x cached prompt tokens taken by the sequences admitted in it
                 + ms_per_decode_sequence x rows decoded.

Kinds: FUSED (prefill, then decode here), PREFILL_ONLY (a PD prefill: leaves after its first token),
DECODE_ONLY (a PD decode: arrives prefilled, KV reserved for prompt + output at admission, decodes
tokens 1..n-1).
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from flexlb.sim.engine import EngineParams, PrefixCache


@dataclass(frozen=True)
class BatchingParams:
    """Costs and limits of one batching worker (milliseconds at time scale 1).

    Defaults: Llama-3.1-8B-Instruct, bf16, one H100 80GB SXM.
    - decode: NVIDIA NIM LLM benchmarks (docs.nvidia.com/nim/benchmarking/llm, Llama-3.1-8B-Instruct,
      NIM 1.8.0): inter-token latency 4.63 ms at concurrency 1, 5.91 ms at 50, 7.57 ms at 100, i.e.
      ~0.03 ms per running sequence; vLLM's CI latency test (latency_llama8B_tp1, 32 in / 128 out at
      batch 8: 833 ms, ~6.5 ms a step on H200) puts vLLM's own step a little higher: base 5 ms.
    - prefill: the same NIM page, Llama-3.3-70B FP8 TP2 on 2x H100, 5000-token prompt: TTFT 406.77 ms,
      0.081 ms/token, ~43% of the FP8 peak; at that efficiency an 8B bf16 model on one H100 prefills
      at ~0.038 ms/token (~26k tokens/s): 0.04.
    - KV: 80 GB x 0.9 - 16 GB weights - ~4 GB activations ~ 52 GB at 128 KiB/token (32 layers x 8 KV
      heads x 128 x K,V x 2 bytes) ~ 400k tokens = 6250 blocks of 64 tokens.
    - limits: vLLM's max_num_batched_tokens 8192 and max_num_seqs 256; Llama-3.1's 128k context.
    Attention's growth with context length is not modelled (a decode row costs the same at any length).
    """

    base_ms: float = 5.0
    prefill_base_ms: float = 0.0  # added once to an iteration that computes prompt tokens
    ms_per_prefill_token: float = 0.04
    ms_per_cached_token: float = 0.0
    ms_per_decode_sequence: float = 0.03
    max_batch_tokens: int = 8192  # what RTP-LLM reports as max_batch_tokens_size
    max_batch_size: int = 256  # rows running at once (a request asking N return sequences is N rows)
    chunked_prefill: bool = False
    block_size_tokens: int = 64
    kv_blocks: int = 6250
    kv_watermark: float = 0.01  # share of KV kept free at admission (vLLM's watermark), so decodes can grow
    preempt: bool = False
    max_seq_len: int = 131072  # reported, not enforced

    @classmethod
    def from_engine(cls, params: EngineParams, **overrides: Any) -> BatchingParams:
        """The FIFO engine's costs as iterations: a prompt alone and a decode step cost what they cost there.

        base = decode step base, the prefill base's excess over it is charged per prefill iteration;
        limits and the KV capacity in tokens come from the defaults (or `overrides`).
        """
        base = cls()
        kv_tokens = base.kv_blocks * base.block_size_tokens
        derived: dict[str, Any] = {
            "base_ms": params.decode_step_base_ms,
            "prefill_base_ms": max(0.0, params.prefill_base_ms - params.decode_step_base_ms),
            "ms_per_prefill_token": params.prefill_ms_per_uncached_token,
            "ms_per_cached_token": params.prefill_ms_per_cached_token,
            "ms_per_decode_sequence": params.decode_step_ms_per_running,
            "block_size_tokens": params.block_size_tokens,
            "kv_blocks": max(1, kv_tokens // max(1, params.block_size_tokens)),
        }
        derived.update(overrides)
        return replace(base, **derived)

    def iteration_ms(self, prefill_tokens: int, cached_tokens: int, decode_rows: int) -> float:
        """Time of one iteration computing `prefill_tokens`, taking `cached_tokens`, decoding `decode_rows`."""
        return (
            self.base_ms
            + (self.prefill_base_ms if prefill_tokens > 0 else 0.0)
            + self.ms_per_prefill_token * prefill_tokens
            + self.ms_per_cached_token * cached_tokens
            + self.ms_per_decode_sequence * decode_rows
        )


class Kind(StrEnum):
    """What a sequence does on this worker."""

    FUSED = "fused"
    PREFILL_ONLY = "prefill_only"
    DECODE_ONLY = "decode_only"


@dataclass(frozen=True)
class Sequence:
    """One request given to the engine."""

    seq_id: int
    prompt_tokens: int
    block_keys: tuple[int, ...] = ()  # the prompt's chained block keys (block_size_tokens each)
    max_new_tokens: int = 1
    kind: Kind = Kind.FUSED
    arrival_ms: float = 0.0
    rows: int = 1  # num_return_sequences: rows decoded together after one prefill


@dataclass(frozen=True)
class FirstToken:
    """A sequence's prefill completed (token 0); waited = arrival to admission, prefill = admission to now."""

    seq_id: int
    cached_tokens: int
    uncached_tokens: int
    waited_ms: float
    prefill_ms: float
    iterations: int = 1  # iterations its prefill took (more than one when chunked)


@dataclass(frozen=True)
class Token:
    """Token `index` (1-based after the first token; 0 is FirstToken) of every row of a sequence."""

    seq_id: int
    index: int


@dataclass(frozen=True)
class Finished:
    """The sequence produced its last token (or, PREFILL_ONLY, its first) and left the engine."""

    seq_id: int


@dataclass(frozen=True)
class Preempted:
    """The sequence lost its KV and waits again; it recomputes prompt and tokens when readmitted."""

    seq_id: int


Event = FirstToken | Token | Finished | Preempted


@dataclass(frozen=True)
class Iteration:
    """One planned engine step: what it runs and how long it takes."""

    serial: int
    start_ms: float
    duration_ms: float
    prefill_tokens: int  # uncached prompt tokens computed
    cached_tokens: int  # cached prompt tokens taken by the sequences admitted in it
    decode_rows: int  # rows decoded (one token each)
    admitted: tuple[int, ...]
    chunks: tuple[tuple[int, int], ...]  # (seq_id, prompt tokens computed in it)
    preempted: tuple[int, ...]

    @property
    def prefill_ids(self) -> tuple[int, ...]:
        """Sequences computing prompt tokens in this iteration."""
        return tuple(sid for sid, _ in self.chunks)


_WAITING, _PREFILLING, _DECODING = 0, 1, 2


class _Seq:
    """Engine-side state of a sequence (mutable)."""

    __slots__ = ("admitted_ms", "blocks", "cached_tokens", "clock0", "epoch", "ever_admitted", "first_done", "gen0",
                 "generated", "iterations", "order", "seq", "state", "to_compute", "uncached_tokens")

    def __init__(self, seq: Sequence, order: int) -> None:
        self.seq = seq
        self.order = order
        self.state = _WAITING
        self.epoch = 0  # bumped when it leaves decoding: its heap entries go stale
        self.blocks = 0
        self.to_compute = 0  # prompt (+ recomputed) tokens left to compute while prefilling
        decode_only = seq.kind is Kind.DECODE_ONLY
        self.generated = 1 if decode_only else 0  # tokens produced, while not decoding
        self.gen0 = 0  # while decoding: generated = gen0 + (clock - clock0)
        self.clock0 = 0
        self.admitted_ms = 0.0
        self.cached_tokens = 0
        self.uncached_tokens = 0
        self.first_done = decode_only  # the prefill worker produced token 0
        self.ever_admitted = False
        self.iterations = 0  # iterations it took part in (not counting the current decode run)


class BatchingEngine:
    """A continuous-batching scheduler over one worker's KV cache and prefix cache."""

    def __init__(self, params: BatchingParams, cache: PrefixCache, token_events: bool = True) -> None:
        # token_events=False skips the per-row Token events (the simulator only needs first token and end),
        # which makes an iteration cost O(admitted + finished) instead of O(running)
        if params.block_size_tokens <= 0 or params.kv_blocks <= 0 or params.max_batch_size <= 0:
            raise ValueError("block_size_tokens, kv_blocks and max_batch_size must be > 0")
        if params.max_batch_tokens <= 0:
            raise ValueError("max_batch_tokens must be > 0")
        self.params = params
        self.cache = cache
        self.token_events = token_events
        self.iterations = 0
        self.last_step_ms = 0.0
        self._seqs: dict[int, _Seq] = {}
        self._waiting: list[tuple[float, int, int]] = []  # (arrival_ms, order, seq_id), sorted: FIFO by arrival
        self._prefilling: dict[int, _Seq] = {}  # admission order (chunked prefills carry over)
        self._decoding: dict[int, _Seq] = {}
        self._decode_rows = 0
        self._prefill_rows = 0
        self._free_blocks = params.kv_blocks
        self._watermark_blocks = int(params.kv_blocks * params.kv_watermark)
        self._clock = 0  # iterations completed: every decoding row gains one token per iteration
        self._finish_heap: list[tuple[int, int, int, int]] = []  # (clock, order, epoch, seq_id)
        self._grow_heap: list[tuple[int, int, int, int]] = []  # (clock at which it needs one more block, ...)
        self._order = 0
        self._serial = 0
        self._inflight: Iteration | None = None
        self._inflight_chunks: list[tuple[_Seq, int]] = []
        self._unreported: list[int] = []  # preempted by a plan that ran nothing (reported with the next one)
        self._finished: deque[int] = deque(maxlen=1000)

    # ------------------------------------------------------------ requests

    def add(self, seq: Sequence) -> None:
        """Queue a sequence (it is admitted by a later plan())."""
        if seq.seq_id in self._seqs:
            raise ValueError(f"sequence {seq.seq_id} is already in the engine")
        if seq.prompt_tokens < 1 or seq.max_new_tokens < 1 or seq.rows < 1:
            raise ValueError("prompt_tokens, max_new_tokens and rows must be >= 1")
        self._order += 1
        s = _Seq(seq, self._order)
        self._seqs[seq.seq_id] = s
        bisect.insort(self._waiting, (seq.arrival_ms, s.order, seq.seq_id))

    def cancel(self, seq_id: int) -> bool:
        """Drop a sequence wherever it is (its KV is freed at once); False when it is not here."""
        s = self._seqs.get(seq_id)
        if s is None:
            return False
        if s.state == _WAITING:
            self._waiting.remove((s.seq.arrival_ms, s.order, seq_id))
        else:
            self._leave_running(s)
        del self._seqs[seq_id]
        return True

    # ------------------------------------------------------------ iterations

    def plan(self, now_ms: float) -> Iteration | None:
        """Schedule the next iteration at `now_ms` (admits, reserves KV, may preempt); None when idle.

        The engine runs one iteration at a time: complete() it before planning the next.
        """
        if self._inflight is not None:
            raise RuntimeError("complete() the iteration in flight before planning another")
        p = self.params
        preempted = self._unreported
        self._unreported = []
        self._grow_decodes(preempted)

        budget = p.max_batch_tokens - self._decode_rows
        chunks: list[tuple[_Seq, int]] = []
        for s in self._prefilling.values():  # chunked prefills in progress go first, in admission order
            if budget <= 0:
                break
            take = min(s.to_compute, budget)
            chunks.append((s, take))
            budget -= take

        admitted: list[int] = []
        cached_total = 0
        while self._waiting:
            _, _, sid = self._waiting[0]
            s = self._seqs[sid]
            running_rows = self._decode_rows + self._prefill_rows
            if running_rows > 0 and running_rows + s.seq.rows > p.max_batch_size:
                break
            cached, compute = self._match(s)
            take = 0
            if compute > 0:
                if p.chunked_prefill:
                    if budget <= 0:
                        break
                    take = min(compute, budget)
                else:
                    if compute > budget and chunks:
                        break  # too big for what is left: it waits to be the iteration's only prefill
                    take = compute
            blocks = self._admission_blocks(s)
            if not self._kv_admits(blocks) and p.preempt:
                budget += self._preempt_newer_than(s, blocks, chunks, preempted)
            if not self._kv_admits(blocks) and (self._decode_rows + self._prefill_rows > 0):
                break  # head of line waits for KV (alone in the engine it goes in regardless: no deadlock)
            self._waiting.pop(0)
            self._admit(s, blocks, cached, compute, now_ms)
            admitted.append(sid)
            cached_total += cached
            if compute > 0:
                chunks.append((s, take))
                budget -= take

        prefill_tokens = sum(take for _, take in chunks)
        if not chunks and self._decode_rows == 0:
            self._unreported = preempted
            return None
        self._serial += 1
        it = Iteration(
            serial=self._serial,
            start_ms=now_ms,
            duration_ms=p.iteration_ms(prefill_tokens, cached_total, self._decode_rows),
            prefill_tokens=prefill_tokens,
            cached_tokens=cached_total,
            decode_rows=self._decode_rows,
            admitted=tuple(admitted),
            chunks=tuple((s.seq.seq_id, take) for s, take in chunks),
            preempted=tuple(preempted),
        )
        self._inflight = it
        self._inflight_chunks = chunks
        return it

    def complete(self, it: Iteration, now_ms: float) -> list[Event]:
        """End the iteration in flight at `now_ms`; the events it produced, in order."""
        if it is not self._inflight:
            raise RuntimeError("not the iteration in flight")
        self._inflight = None
        chunks, self._inflight_chunks = self._inflight_chunks, []
        self.iterations += 1
        self.last_step_ms = it.duration_ms
        events: list[Event] = [Preempted(sid) for sid in it.preempted]
        self._clock += 1
        if self.token_events:
            for d in self._decoding.values():
                index = self._generated(d) - 1
                if index < d.seq.max_new_tokens:
                    events.append(Token(d.seq.seq_id, index))
        while self._finish_heap and self._finish_heap[0][0] <= self._clock:
            _, _, epoch, sid = heapq.heappop(self._finish_heap)
            done = self._seqs.get(sid)
            if done is None or done.epoch != epoch or done.state != _DECODING:
                continue
            self._retire(done)
            events.append(Finished(sid))
        for s, take in chunks:
            sid = s.seq.seq_id
            if self._seqs.get(sid) is not s or s.state != _PREFILLING:
                continue  # cancelled while the iteration ran
            s.to_compute -= take
            s.iterations += 1
            if s.to_compute > 0:
                continue
            self.cache.insert(s.seq.block_keys)
            if not s.first_done:
                s.first_done = True
                events.append(FirstToken(sid, s.cached_tokens, s.uncached_tokens,
                                         s.admitted_ms - s.seq.arrival_ms, now_ms - s.admitted_ms, s.iterations))
                produced = 1
            else:
                # a recompute after preemption: its last step samples the next token
                if self.token_events:
                    events.append(Token(sid, s.generated))
                produced = s.generated + 1
            if s.seq.kind is Kind.PREFILL_ONLY or produced >= s.seq.max_new_tokens:
                self._retire(s)
                events.append(Finished(sid))
            else:
                del self._prefilling[sid]
                self._prefill_rows -= s.seq.rows
                self._start_decoding(s, produced)
        return events

    # ------------------------------------------------------------ status

    @property
    def waiting_count(self) -> int:
        """Sequences waiting for admission."""
        return len(self._waiting)

    @property
    def running_count(self) -> int:
        """Sequences admitted (prefilling or decoding)."""
        return len(self._prefilling) + len(self._decoding)

    @property
    def kv_total_tokens(self) -> int:
        """KV capacity in tokens."""
        return self.params.kv_blocks * self.params.block_size_tokens

    @property
    def kv_available_tokens(self) -> int:
        """KV not reserved by running sequences, in tokens."""
        return max(0, self._free_blocks) * self.params.block_size_tokens

    @property
    def max_batch_tokens(self) -> int:
        """Token budget of an iteration."""
        return self.params.max_batch_tokens

    @property
    def max_seq_len(self) -> int:
        """Longest sequence the engine reports it takes."""
        return self.params.max_seq_len

    @property
    def idle(self) -> bool:
        """Nothing waiting, nothing running."""
        return not self._seqs

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._seqs

    def waiting_ids(self) -> list[int]:
        """Waiting sequences, in admission order."""
        return [sid for _, _, sid in self._waiting]

    def running_ids(self) -> list[int]:
        """Running sequences (prefilling, then decoding)."""
        return [*self._prefilling, *self._decoding]

    def finished_ids(self) -> list[int]:
        """The last 1000 sequences that finished, oldest first (cancelled ones are not listed)."""
        return list(self._finished)

    def is_waiting(self, seq_id: int) -> bool:
        """Whether the sequence waits for admission (False when running or unknown)."""
        s = self._seqs.get(seq_id)
        return s is not None and s.state == _WAITING

    def iterations_of(self, seq_id: int) -> int:
        """Iterations the sequence took part in so far (0 when unknown)."""
        s = self._seqs.get(seq_id)
        if s is None:
            return 0
        return s.iterations + (self._clock - s.clock0 if s.state == _DECODING else 0)

    def cached_tokens_of(self, seq_id: int) -> int:
        """Prompt tokens the sequence took from the prefix cache at its first admission."""
        s = self._seqs.get(seq_id)
        return s.cached_tokens if s is not None else 0

    # ------------------------------------------------------------ internals

    def _generated(self, s: _Seq) -> int:
        return s.gen0 + (self._clock - s.clock0) if s.state == _DECODING else s.generated

    def _kv_tokens(self, s: _Seq, generated: int) -> int:
        # the prompt's KV is shared by the rows; each row keeps its own generated tokens
        return s.seq.prompt_tokens + s.seq.rows * generated

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.params.block_size_tokens)

    def _admission_blocks(self, s: _Seq) -> int:
        if s.seq.kind is Kind.DECODE_ONLY:
            return self._blocks_for(self._kv_tokens(s, s.seq.max_new_tokens))  # reserved for the whole output
        return self._blocks_for(self._kv_tokens(s, s.generated))

    def _kv_admits(self, blocks: int) -> bool:
        return self._free_blocks - blocks >= self._watermark_blocks

    def _match(self, s: _Seq) -> tuple[int, int]:
        """(cached, to compute) if admitted now: prompt + generated tokens, minus the cached prefix."""
        if s.seq.kind is Kind.DECODE_ONLY and not s.ever_admitted:
            return 0, 0  # its KV came from the prefill worker
        known = self._kv_tokens(s, s.generated)
        cached = self.cache.match_blocks(s.seq.block_keys) * self.params.block_size_tokens
        # the last token is always computed (it produces the next output token)
        cached = max(0, min(cached, s.seq.prompt_tokens, known - 1))
        return cached, known - cached

    def _admit(self, s: _Seq, blocks: int, cached: int, compute: int, now_ms: float) -> None:
        s.blocks = blocks
        self._free_blocks -= blocks
        if not s.ever_admitted:
            s.ever_admitted = True
            s.admitted_ms = now_ms
            s.cached_tokens = cached
            s.uncached_tokens = s.seq.prompt_tokens - cached
        if compute > 0:
            s.state = _PREFILLING
            s.to_compute = compute
            self._prefilling[s.seq.seq_id] = s
            self._prefill_rows += s.seq.rows
        else:
            self._start_decoding(s, s.generated)

    def _start_decoding(self, s: _Seq, generated: int) -> None:
        s.state = _DECODING
        s.gen0 = generated
        s.clock0 = self._clock
        self._decoding[s.seq.seq_id] = s
        self._decode_rows += s.seq.rows
        finish = s.clock0 + max(0, s.seq.max_new_tokens - generated)
        heapq.heappush(self._finish_heap, (finish, s.order, s.epoch, s.seq.seq_id))
        self._push_growth(s, finish)

    def _push_growth(self, s: _Seq, finish: int) -> None:
        """Schedule the step at which the sequence's KV outgrows its blocks (if before it finishes)."""
        room = s.blocks * self.params.block_size_tokens - s.seq.prompt_tokens
        at = max(self._clock, s.clock0 - s.gen0 + room // s.seq.rows + 1)
        if at < finish:
            heapq.heappush(self._grow_heap, (at, s.order, s.epoch, s.seq.seq_id))

    def _grow_decodes(self, preempted: list[int]) -> None:
        """Give decoding sequences the block their next token needs; preempt the newest when none is free."""
        while self._grow_heap and self._grow_heap[0][0] <= self._clock:
            _, _, epoch, sid = heapq.heappop(self._grow_heap)
            s = self._seqs.get(sid)
            if s is None or s.epoch != epoch or s.state != _DECODING:
                continue
            need = self._blocks_for(self._kv_tokens(s, self._generated(s))) - s.blocks
            while need > self._free_blocks and s.state == _DECODING and self.running_count > 1:
                victim = max(self._running(), key=lambda r: (r.seq.arrival_ms, r.order))
                self._preempt(victim)
                preempted.append(victim.seq.seq_id)
            if s.state == _DECODING:
                s.blocks += need  # alone in the engine it may overcommit rather than stall forever
                self._free_blocks -= need
                finish = s.clock0 + max(0, s.seq.max_new_tokens - s.gen0)
                self._push_growth(s, finish)

    def _preempt_newer_than(self, head: _Seq, blocks: int, chunks: list[tuple[_Seq, int]],
                            preempted: list[int]) -> int:
        """Preempt running sequences that arrived after `head` (newest first) until it fits; budget handed back."""
        freed_budget = 0
        key = (head.seq.arrival_ms, head.order)
        while not self._kv_admits(blocks):
            newer = [r for r in self._running() if (r.seq.arrival_ms, r.order) > key]
            if not newer:
                break
            victim = max(newer, key=lambda r: (r.seq.arrival_ms, r.order))
            for i, (c, take) in enumerate(chunks):
                if c is victim:
                    del chunks[i]
                    freed_budget += take
                    break
            self._preempt(victim)
            preempted.append(victim.seq.seq_id)
        return freed_budget

    def _running(self) -> Iterator[_Seq]:
        yield from self._prefilling.values()
        yield from self._decoding.values()

    def _leave_running(self, s: _Seq) -> None:
        """Take a running sequence out of the running set and free its KV."""
        sid = s.seq.seq_id
        if s.state == _DECODING:
            s.generated = self._generated(s)
            s.iterations += self._clock - s.clock0
            del self._decoding[sid]
            self._decode_rows -= s.seq.rows
        elif s.state == _PREFILLING:
            del self._prefilling[sid]
            self._prefill_rows -= s.seq.rows
        s.epoch += 1
        self._free_blocks += s.blocks
        s.blocks = 0

    def _preempt(self, s: _Seq) -> None:
        self._leave_running(s)
        s.state = _WAITING
        s.to_compute = 0
        bisect.insort(self._waiting, (s.seq.arrival_ms, s.order, s.seq.seq_id))

    def _retire(self, s: _Seq) -> None:
        self._leave_running(s)
        del self._seqs[s.seq.seq_id]
        self._finished.append(s.seq.seq_id)
