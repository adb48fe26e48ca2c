/*
 * RTP-LLM KV block-key hash (rtp-llm-wire.md section 6) as a CPython extension.
 *
 * The pure-Python oracle is flexlb.balancer.prefix.rtp_block_keys; this must agree with it bit
 * for bit. All arithmetic is on uint64_t so wrapping is defined behaviour; the signed reads
 * (int32 sign extension, arithmetic right shift, int64 result) are spelled out with masks rather
 * than relying on implementation-defined signed conversions and shifts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define GOLDEN UINT64_C(0x9e3779b97f4a7c15)
#define HIGH32 UINT64_C(0xffffffff00000000)
#define SIGN64 UINT64_C(0x8000000000000000)

/* One step of HashUtil.h's combine; tok holds the token's low 32 bits. */
static inline uint64_t
step(uint64_t h, uint32_t tok)
{
    uint64_t v = (uint64_t)tok | ((tok & UINT32_C(0x80000000)) ? HIGH32 : 0);
    uint64_t sar32 = (h >> 32) | ((h & SIGN64) ? HIGH32 : 0);
    return h ^ (v + GOLDEN + (h << 12) + sar32);
}

/* The state read as a signed int64, without an implementation-defined cast. */
static PyObject *
key_object(uint64_t h)
{
    long long k = (h & SIGN64) ? -(long long)(~h) - 1 : (long long)h;
    return PyLong_FromLongLong(k);
}

/* Native-endian 4-byte signed ints: 'i' (or 'l' where long is 4 bytes), optionally prefixed. */
static int
is_native_int32(const Py_buffer *view)
{
    const char *f = view->format;
    if (f == NULL || view->itemsize != 4 || view->ndim != 1)
        return 0;
    if (*f == '@' || *f == '=')
        f++;
#if PY_LITTLE_ENDIAN
    else if (*f == '<')
        f++;
#else
    else if (*f == '>')
        f++;
#endif
    return (f[0] == 'i' || f[0] == 'l') && f[1] == '\0';
}

static PyObject *
keys_from_buffer(const Py_buffer *view, Py_ssize_t block_size)
{
    Py_ssize_t n = view->shape[0];
    Py_ssize_t stride = view->strides ? view->strides[0] : 4;
    Py_ssize_t nblocks = n / block_size;
    PyObject *out = PyList_New(nblocks);
    if (out == NULL)
        return NULL;
    const char *p = (const char *)view->buf;
    uint64_t h = 0;
    for (Py_ssize_t b = 0; b < nblocks; b++) {
        for (Py_ssize_t i = 0; i < block_size; i++) {
            int32_t t;
            memcpy(&t, p, 4); /* strided or unaligned exporters are legal */
            p += stride;
            h = step(h, (uint32_t)t);
        }
        PyObject *k = key_object(h);
        if (k == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, b, k);
    }
    return out;
}

static PyObject *
keys_from_sequence(PyObject *tokens, Py_ssize_t block_size)
{
    PyObject *seq = PySequence_Fast(tokens, "tokens must be a sequence of ints");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_ssize_t nblocks = n / block_size;
    PyObject *out = PyList_New(nblocks);
    if (out == NULL)
        goto fail;
    uint64_t h = 0;
    Py_ssize_t idx = 0;
    for (Py_ssize_t b = 0; b < nblocks; b++) {
        for (Py_ssize_t i = 0; i < block_size; i++, idx++) {
            PyObject *item = items[idx];
            unsigned long long low;
            if (PyLong_Check(item)) {
                low = PyLong_AsUnsignedLongLongMask(item);
            }
            else {
                /* numpy integer scalars and other __index__ types are ints; floats, str etc. raise */
                PyObject *as_int = PyNumber_Index(item);
                if (as_int == NULL)
                    goto fail;
                low = PyLong_AsUnsignedLongLongMask(as_int);
                Py_DECREF(as_int);
            }
            if (low == (unsigned long long)-1 && PyErr_Occurred())
                goto fail;
            h = step(h, (uint32_t)(low & 0xffffffffu));
        }
        PyObject *k = key_object(h);
        if (k == NULL)
            goto fail;
        PyList_SET_ITEM(out, b, k);
    }
    Py_DECREF(seq);
    return out;

fail:
    Py_XDECREF(out);
    Py_DECREF(seq);
    return NULL;
}

static PyObject *
block_keys(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"tokens", "block_size", NULL};
    PyObject *tokens;
    Py_ssize_t block_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "On:block_keys", kwlist, &tokens, &block_size))
        return NULL;
    if (block_size <= 0)
        return PyList_New(0);

    if (PyObject_CheckBuffer(tokens)) {
        Py_buffer view;
        if (PyObject_GetBuffer(tokens, &view, PyBUF_RECORDS_RO) == 0) {
            if (is_native_int32(&view)) {
                PyObject *out = keys_from_buffer(&view, block_size);
                PyBuffer_Release(&view);
                return out;
            }
            PyBuffer_Release(&view);
        }
        else {
            /* an exporter that cannot give this view is still hashed item by item */
            PyErr_Clear();
        }
    }
    return keys_from_sequence(tokens, block_size);
}


/* Read one base-128 varint; returns 0 on truncation or overlong input. */
static inline int
read_varint(const unsigned char **pp, const unsigned char *end, uint64_t *out)
{
    const unsigned char *p = *pp;
    uint64_t v = 0;
    for (int shift = 0; shift < 70 && p < end; shift += 7) {
        unsigned char c = *p++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *pp = p;
            *out = v;
            return 1;
        }
    }
    return 0;
}

/*
 * Keys straight from a serialized GenerateInputPB: the token ids (field 2, packed or not) are read
 * from the wire bytes, so no Python int is ever made per token (the protobuf runtime spends ~1 ms
 * on that for a 32k-token prompt). Other fields are skipped. Returns (token count, keys).
 */
static PyObject *
prompt_block_keys(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"request", "block_size", NULL};
    Py_buffer req;
    Py_ssize_t block_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*n:prompt_block_keys", kwlist, &req, &block_size))
        return NULL;
    const unsigned char *p = (const unsigned char *)req.buf;
    const unsigned char *end = p + req.len;
    /* every token takes at least one byte on the wire, so this bounds the count */
    uint32_t *tokens = PyMem_Malloc(sizeof(uint32_t) * (size_t)(req.len > 0 ? req.len : 1));
    if (tokens == NULL) {
        PyBuffer_Release(&req);
        return PyErr_NoMemory();
    }
    Py_ssize_t n = 0;
    const char *error = NULL;
    while (p < end && error == NULL) {
        uint64_t tag, v;
        if (!read_varint(&p, end, &tag)) { error = "truncated tag"; break; }
        uint64_t field = tag >> 3, wire = tag & 7;
        if (wire == 0) {
            if (!read_varint(&p, end, &v)) { error = "truncated varint"; break; }
            if (field == 2)
                tokens[n++] = (uint32_t)v;
        }
        else if (wire == 1) {
            if (end - p < 8) { error = "truncated fixed64"; break; }
            p += 8;
        }
        else if (wire == 5) {
            if (end - p < 4) { error = "truncated fixed32"; break; }
            p += 4;
        }
        else if (wire == 2) {
            if (!read_varint(&p, end, &v) || v > (uint64_t)(end - p)) { error = "truncated length"; break; }
            const unsigned char *stop = p + v;
            if (field == 2) {
                while (p < stop) {
                    if (!read_varint(&p, stop, &v)) { error = "truncated packed token"; break; }
                    tokens[n++] = (uint32_t)v;
                }
            }
            p = stop;
        }
        else {
            error = "unsupported wire type";
        }
    }
    PyBuffer_Release(&req);
    if (error != NULL) {
        PyMem_Free(tokens);
        PyErr_Format(PyExc_ValueError, "not a valid GenerateInputPB: %s", error);
        return NULL;
    }
    Py_ssize_t nblocks = block_size > 0 ? n / block_size : 0;
    PyObject *keys = PyList_New(nblocks);
    if (keys == NULL) {
        PyMem_Free(tokens);
        return NULL;
    }
    uint64_t h = 0;
    Py_ssize_t idx = 0;
    for (Py_ssize_t b = 0; b < nblocks; b++) {
        for (Py_ssize_t i = 0; i < block_size; i++)
            h = step(h, tokens[idx++]);
        PyObject *k = key_object(h);
        if (k == NULL) {
            Py_DECREF(keys);
            PyMem_Free(tokens);
            return NULL;
        }
        PyList_SET_ITEM(keys, b, k);
    }
    PyMem_Free(tokens);
    return Py_BuildValue("(nN)", n, keys);
}

static PyMethodDef methods[] = {
    {"block_keys", (PyCFunction)(void (*)(void))block_keys, METH_VARARGS | METH_KEYWORDS,
     "block_keys($module, /, tokens, block_size)\n--\n\n"
     "Signed 64-bit chained keys of every full block of tokens (RTP-LLM block_cache_keys).\n"
     "tokens: a sequence of ints (wrapped to int32) or a buffer of native 4-byte signed ints."},
    {"prompt_block_keys", (PyCFunction)(void (*)(void))prompt_block_keys, METH_VARARGS | METH_KEYWORDS,
     "prompt_block_keys($module, /, request, block_size)\n--\n\n"
     "(token count, keys) read straight from a serialized GenerateInputPB (field 2 token_ids)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "flexlb.balancer._blockhash",
    .m_doc = "C implementation of RTP-LLM's KV block-key hash.",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__blockhash(void)
{
    return PyModule_Create(&module);
}
