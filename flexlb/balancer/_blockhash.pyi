from collections.abc import Iterable
from typing import SupportsIndex

def block_keys(tokens: Iterable[SupportsIndex], block_size: int) -> list[int]: ...
