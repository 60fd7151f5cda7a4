/* fake_cublas.c - the tests' stand-in for libcublas.so: cuBLAS's calls that flowc makes, on the emulated GPU.
 *
 * Loaded through LD_LIBRARY_PATH in place of the toolkit's libcublas; the
 * GEMMs go to the emulated driver (fake_cuda.c, the library FLOWC_LIBCUDA
 * names, which the program has loaded by then), which runs or records them. */
#define _GNU_SOURCE
#include <cublas_v2.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cublasContext {
  int (*gemm)(int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int);
  int (*device_memory)(const void *, size_t);
};

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
  const char *path = getenv("FLOWC_LIBCUDA");
  void *driver = path ? dlopen(path, RTLD_NOW | RTLD_NOLOAD) : NULL;
  if (!driver) {
    fprintf(stderr, "emu: cublasCreate: the emulated driver (FLOWC_LIBCUDA) is not loaded\n");
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  struct cublasContext *h = calloc(1, sizeof *h);
  if (!h) return CUBLAS_STATUS_ALLOC_FAILED;
  void *gemm = dlsym(driver, "emu_gemm"), *memory = dlsym(driver, "emu_device_memory");
  memcpy(&h->gemm, &gemm, sizeof gemm);
  memcpy(&h->device_memory, &memory, sizeof memory);
  if (!h->gemm || !h->device_memory) {
    free(h);
    return CUBLAS_STATUS_NOT_INITIALIZED;
  }
  *handle = h;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  free(handle);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  (void)handle;
  (void)stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace, size_t bytes) {
  return handle->device_memory(workspace, bytes) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  (void)handle;
  (void)mode; /* the emulator's GEMMs are exact enough either way */
  return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t status) {
  return status == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_(emulated error)";
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc) {
  if (m < 0 || n < 0 || k < 0 || lda < 1 || ldb < 1 || ldc < 1 || lda < (transa == CUBLAS_OP_N ? m : k) ||
      ldb < (transb == CUBLAS_OP_N ? k : n) || ldc < m)
    return CUBLAS_STATUS_INVALID_VALUE;
  return handle->gemm(transa != CUBLAS_OP_N, transb != CUBLAS_OP_N, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc)
             ? CUBLAS_STATUS_EXECUTION_FAILED
             : CUBLAS_STATUS_SUCCESS;
}
