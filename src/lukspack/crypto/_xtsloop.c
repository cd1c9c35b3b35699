/*
 * The per-sector loop around OpenSSL's own AES-XTS, with the GIL released.
 *
 * OpenSSL's XTS takes one data unit (sector) per call: from Python that is two ctypes round trips
 * per 512-byte sector, slower than the disk. This loop makes those calls from C. It contains no
 * cryptography: for each sector it sets the plain64 IV (the sector number, little-endian) with
 * EVP_CipherInit_ex and transforms the sector in place with EVP_CipherUpdate.
 *
 * It is built without OpenSSL headers and is not linked against libcrypto: Python passes the
 * addresses of EVP_CipherInit_ex and EVP_CipherUpdate from the libcrypto it loaded with ctypes
 * (lukspack/crypto/openssl.py), so both paths use the very same library, and building needs only
 * a C compiler and Python's headers. When it cannot be built, lukspack uses its numpy XTS engine.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef int (*cipher_init_fn)(void *ctx, const void *cipher, void *engine,
                              const unsigned char *key, const unsigned char *iv, int enc);
typedef int (*cipher_update_fn)(void *ctx, unsigned char *out, int *outl,
                                const unsigned char *in, int inl);

static PyObject *
xts_sectors(PyObject *self, PyObject *args)
{
    unsigned long long init_addr, update_addr, ctx_addr, first_iv, iv_step, iv_mask;
    Py_ssize_t sector_size;
    Py_buffer view;

    if (!PyArg_ParseTuple(args, "KKKw*nKKK:xts_sectors", &init_addr, &update_addr, &ctx_addr,
                          &view, &sector_size, &first_iv, &iv_step, &iv_mask))
        return NULL;
    if (sector_size < 16 || sector_size > (1 << 24) || view.len % sector_size) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "buffer is not whole sectors");
        return NULL;
    }
    cipher_init_fn init = (cipher_init_fn)(uintptr_t)init_addr;
    cipher_update_fn update = (cipher_update_fn)(uintptr_t)update_addr;
    void *ctx = (void *)(uintptr_t)ctx_addr;
    unsigned char *buf = view.buf;
    Py_ssize_t len = view.len;
    Py_ssize_t failed_at = -1;

    Py_BEGIN_ALLOW_THREADS
    unsigned char iv[16] = {0};
    uint64_t n = first_iv;
    for (Py_ssize_t off = 0; off < len; off += sector_size, n += iv_step) {
        uint64_t v = n & iv_mask;
        for (int i = 0; i < 8; i++)
            iv[i] = (unsigned char)(v >> (8 * i));
        int outl = 0;
        if (init(ctx, NULL, NULL, NULL, iv, -1) != 1 ||
            update(ctx, buf + off, &outl, buf + off, (int)sector_size) != 1 ||
            outl != sector_size) {
            failed_at = off;
            break;
        }
    }
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&view);
    if (failed_at >= 0) {
        PyErr_Format(PyExc_RuntimeError, "OpenSSL AES-XTS failed at byte %zd of the buffer",
                     failed_at);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"xts_sectors", xts_sectors, METH_VARARGS,
     "xts_sectors(init, update, ctx, buf, sector_size, first_iv, iv_step, iv_mask): transform "
     "whole sectors of buf in place with an initialised EVP AES-XTS context, one data unit per "
     "sector; sector k's IV is (first_iv + k * iv_step) & iv_mask."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_xtsloop", "OpenSSL AES-XTS, one data unit per sector, looped in C.",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__xtsloop(void)
{
    return PyModule_Create(&module);
}
