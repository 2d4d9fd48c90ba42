/* The log store's sealing loop, compiled: the same entries as `_sealer.seal_python`, byte for byte.
 *
 * In CPython each SHA-256 call costs about a microsecond of interpreter and object overhead, while
 * OpenSSL hashes an entry in a fraction of that. An entry needs two (its payload digest and its
 * chain link), so a Python loop is bound by call overhead; this loop calls OpenSSL directly, with
 * the digest fetched once. The clock and CRC32C stay the callables the store was given (the
 * configured PHC or a test's stand-in, and the crc32c package), so there is one implementation of
 * each. The layout is `_format.ENTRY_HEADER`; `docs/log-store.md` documents it.
 *
 * The loop never raises for a record it cannot seal: it stops there and returns how far it got,
 * so the caller can store what was sealed and deal with that record itself (see `_sealer`).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define HEADER_BYTES 112
#define SEALED_PREFIX 80
#define TRACE_BYTES 16
#define DIGEST_BYTES 32
#define ENTRY_VERSION 1

static EVP_MD *sha256;

static void put_u32(uint8_t *at, uint32_t value) {
    for (int i = 0; i < 4; i++) at[i] = (uint8_t)(value >> (8 * i));
}

static void put_u64(uint8_t *at, uint64_t value) {
    for (int i = 0; i < 8; i++) at[i] = (uint8_t)(value >> (8 * i));
}

/* One digest over up to three pieces; 0 when OpenSSL fails (it does not, short of memory). */
static int digest3(EVP_MD_CTX *ctx, const void *a, size_t na, const void *b, size_t nb,
                   const void *c, size_t nc, uint8_t *out) {
    return EVP_DigestInit_ex(ctx, sha256, NULL) && EVP_DigestUpdate(ctx, a, na) &&
           EVP_DigestUpdate(ctx, b, nb) && (nc == 0 || EVP_DigestUpdate(ctx, c, nc)) &&
           EVP_DigestFinal_ex(ctx, out, NULL);
}

/* A Python int into [0, limit]; -1 (no exception left set) when it is not one. */
static int as_u64(PyObject *value, uint64_t limit, uint64_t *out) {
    if (value == NULL || !PyLong_Check(value)) {
        PyErr_Clear();
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (PyErr_Occurred() || v > limit) {
        PyErr_Clear();
        return -1;
    }
    *out = v;
    return 0;
}

/* `as_u64` of what a call returned (a new reference, or NULL when it raised), releasing it. */
static int take_u64(PyObject *returned, uint64_t limit, uint64_t *out) {
    int status = as_u64(returned, limit, out);
    Py_XDECREF(returned);
    return status;
}

/* Seal one record at `entry`, where `room` bytes are free; the padded size when sealed, 0 when
 * stopped (nothing written), -1 when an exception is set. */
static Py_ssize_t seal_record(PyObject *record, PyObject *names, PyObject *now, PyObject *crc,
                              uint8_t clock, uint64_t seq, uint8_t *chain, uint8_t *entry,
                              size_t room, EVP_MD_CTX *ctx) {
    if (!PyTuple_CheckExact(record) || PyTuple_GET_SIZE(record) != 4) return 0;
    PyObject *payload = PyTuple_GET_ITEM(record, 2);
    PyObject *trace = PyTuple_GET_ITEM(record, 3);
    if (!PyBytes_CheckExact(trace)) return 0;
    Py_ssize_t trace_len = PyBytes_GET_SIZE(trace);
    if (trace_len != 0 && trace_len != TRACE_BYTES) return 0;

    PyObject *key = PyTuple_Pack(2, PyTuple_GET_ITEM(record, 0), PyTuple_GET_ITEM(record, 1));
    if (key == NULL) return -1;
    PyObject *entry_names = PyDict_GetItemWithError(names, key); /* borrowed */
    Py_DECREF(key);
    if (entry_names == NULL) {
        PyErr_Clear(); /* absent, or an unhashable name: the caller's slow path says which */
        return 0;
    }
    uint64_t node_len, event_len;
    if (!PyTuple_CheckExact(entry_names) || PyTuple_GET_SIZE(entry_names) != 3 ||
        as_u64(PyTuple_GET_ITEM(entry_names, 0), 255, &node_len) != 0 ||
        as_u64(PyTuple_GET_ITEM(entry_names, 1), 255, &event_len) != 0 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(entry_names, 2)) ||
        (uint64_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(entry_names, 2)) != node_len + event_len)
        return 0;
    /* Held across the clock and CRC calls, which run Python code. */
    PyObject *name_bytes = Py_NewRef(PyTuple_GET_ITEM(entry_names, 2));

    Py_ssize_t result = 0;
    Py_buffer view;
    if (PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) != 0) {
        PyErr_Clear();
        Py_DECREF(name_bytes);
        return 0;
    }
    size_t size = HEADER_BYTES + (size_t)(node_len + event_len) + (size_t)view.len;
    size_t padded = (size + 7) & ~(size_t)7;
    uint64_t stamp, payload_crc;
    if (view.len > UINT32_MAX || padded > room) goto done;
    if (take_u64(PyObject_CallNoArgs(now), UINT64_MAX, &stamp) != 0) goto done;
    if (take_u64(PyObject_CallOneArg(crc, payload), UINT32_MAX, &payload_crc) != 0) goto done;

    uint8_t stamp_le[8];
    memcpy(entry, "VGLE", 4);
    entry[4] = ENTRY_VERSION;
    entry[5] = clock;
    entry[6] = (uint8_t)node_len;
    entry[7] = (uint8_t)event_len;
    put_u64(entry + 8, seq);
    put_u64(entry + 16, stamp);
    if (trace_len) memcpy(entry + 24, PyBytes_AS_STRING(trace), TRACE_BYTES);
    else memset(entry + 24, 0, TRACE_BYTES);
    put_u32(entry + 40, (uint32_t)view.len);
    put_u32(entry + 44, (uint32_t)payload_crc);
    put_u64(stamp_le, stamp);
    const char *name_data = PyBytes_AS_STRING(name_bytes);
    size_t name_len = (size_t)(node_len + event_len);
    if (!digest3(ctx, stamp_le, 8, view.buf, (size_t)view.len, NULL, 0, entry + 48) ||
        !digest3(ctx, chain, DIGEST_BYTES, entry, SEALED_PREFIX, name_data, name_len,
                 entry + SEALED_PREFIX)) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
        result = -1;
        goto done;
    }
    memcpy(chain, entry + SEALED_PREFIX, DIGEST_BYTES);
    memcpy(entry + HEADER_BYTES, name_data, name_len);
    memcpy(entry + HEADER_BYTES + name_len, view.buf, (size_t)view.len);
    memset(entry + size, 0, padded - size);
    result = (Py_ssize_t)padded;
done:
    PyBuffer_Release(&view);
    Py_DECREF(name_bytes);
    return result;
}

PyDoc_STRVAR(seal_doc,
"seal(records, index, stop, names, now, crc, clock, seq, chain, out)\n"
"--\n\n"
"Seal records[index:stop] as consecutive entries into the writable buffer `out`; see\n"
"`_sealer.seal_python`.\n\n"
"Returns (index reached, bytes used, last sequence number, last chain). Stops early at a\n"
"record it cannot seal (names not in `names`, a bad trace id, no room left in `out`, a\n"
"payload that is not a buffer, a clock or CRC call that fails) without raising.");

static PyObject *seal(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "seal() takes 10 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *records = args[0], *names = args[3], *now = args[4], *crc = args[5];
    if (!PyList_CheckExact(records) && !PyTuple_CheckExact(records)) {
        PyErr_SetString(PyExc_TypeError, "records must be a list or a tuple");
        return NULL;
    }
    if (!PyDict_CheckExact(names)) {
        PyErr_SetString(PyExc_TypeError, "names must be a dict");
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    Py_ssize_t stop = PyLong_AsSsize_t(args[2]);
    long clock = PyLong_AsLong(args[6]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[7]);
    if (PyErr_Occurred()) return NULL;
    if (!PyBytes_CheckExact(args[8]) || PyBytes_GET_SIZE(args[8]) != DIGEST_BYTES) {
        PyErr_SetString(PyExc_TypeError, "chain must be 32 bytes");
        return NULL;
    }
    if (clock < 0 || clock > 255 || index < 0) {
        PyErr_SetString(PyExc_ValueError, "clock is a byte and index is not negative");
        return NULL;
    }
    Py_buffer out;
    if (PyObject_GetBuffer(args[9], &out, PyBUF_WRITABLE) != 0) return NULL;
    uint8_t chain[DIGEST_BYTES];
    memcpy(chain, PyBytes_AS_STRING(args[8]), DIGEST_BYTES);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        PyBuffer_Release(&out);
        return PyErr_NoMemory();
    }
    size_t used = 0;
    int failed = 0;
    /* The size is read again on every step: the clock and CRC calls run Python code. */
    /* Sequence numbers are u64: the last one ends the loop (the reference raises for it). */
    while (index < stop && index < PySequence_Fast_GET_SIZE(records) && seq < UINT64_MAX) {
        PyObject *record = PySequence_Fast_GET_ITEM(records, index);
        Py_INCREF(record);
        Py_ssize_t sealed = seal_record(record, names, now, crc, (uint8_t)clock, seq + 1, chain,
                                        (uint8_t *)out.buf + used, (size_t)out.len - used, ctx);
        Py_DECREF(record);
        if (sealed < 0) failed = 1;
        if (sealed <= 0) break;
        used += (size_t)sealed;
        seq += 1;
        index += 1;
    }
    EVP_MD_CTX_free(ctx);
    PyBuffer_Release(&out);
    if (failed) return NULL;
    return Py_BuildValue("nnKy#", index, (Py_ssize_t)used, seq, (const char *)chain,
                         (Py_ssize_t)DIGEST_BYTES);
}

static PyMethodDef methods[] = {
    {"seal", (PyCFunction)(void (*)(void))seal, METH_FASTCALL, seal_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_sealc",
    "The log store's sealing loop, compiled (OpenSSL SHA-256).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__sealc(void) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    /* Fetched once: an implicit fetch on every digest init is what makes hashlib slow here. */
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
    sha256 = (EVP_MD *)EVP_sha256();
#endif
    if (sha256 == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL provides no SHA-256");
        return NULL;
    }
    return PyModule_Create(&module_def);
}
