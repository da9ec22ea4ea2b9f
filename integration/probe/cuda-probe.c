/*
 * cuda-probe: what a CUDA program sees of the driver in its container.
 * It loads libcuda.so.1 and libnvidia-ml.so.1 by SONAME, as the CUDA
 * runtime and nvidia-smi do (no CUDA headers or toolkit needed), and prints
 * one line per fact:
 *   libcuda: cuInit=<code> (<name>)
 *   devices: <n>
 *   device 0: <name>, <sm> SMs
 *   context: SM count <n>            (cuCtxGetExecAffinity: the MPS share)
 *   memory: 1 MiB allocated, set and read back: ok
 *   nvml: nvmlInit_v2=<code> (<string>)
 *   nvml devices: <n>
 * With --hold SECONDS it keeps its context that long (to be seen by
 * `gpushare status` while other clients run). Exit 0 when every library
 * loaded; 1 when one did not; 2 when the GPU work failed.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;
typedef struct {
    int type; /* CU_EXEC_AFFINITY_TYPE_SM_COUNT = 0 */
    union { struct { unsigned int val; } smCount; } param;
} CUexecAffinityParam;
#define CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT 16

static void *sym(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) printf("missing symbol: %s\n", name);
    return p;
}

static int cuda(int hold) {
    void *cu = dlopen("libcuda.so.1", RTLD_NOW);
    if (!cu) {
        printf("libcuda: dlopen failed: %s\n", dlerror());
        return 1;
    }
    CUresult (*cuInit)(unsigned) = sym(cu, "cuInit");
    CUresult (*cuGetErrorName)(CUresult, const char **) = sym(cu, "cuGetErrorName");
    CUresult (*cuDeviceGetCount)(int *) = sym(cu, "cuDeviceGetCount");
    CUresult (*cuDeviceGet)(CUdevice *, int) = sym(cu, "cuDeviceGet");
    CUresult (*cuDeviceGetName)(char *, int, CUdevice) = sym(cu, "cuDeviceGetName");
    CUresult (*cuDeviceGetAttribute)(int *, int, CUdevice) = sym(cu, "cuDeviceGetAttribute");
    CUresult (*cuCtxCreate)(CUcontext *, unsigned, CUdevice) = sym(cu, "cuCtxCreate_v2");
    CUresult (*cuCtxGetExecAffinity)(CUexecAffinityParam *, int) = dlsym(cu, "cuCtxGetExecAffinity");
    CUresult (*cuMemAlloc)(CUdeviceptr *, size_t) = sym(cu, "cuMemAlloc_v2");
    CUresult (*cuMemsetD8)(CUdeviceptr, unsigned char, size_t) = sym(cu, "cuMemsetD8_v2");
    CUresult (*cuMemcpyDtoH)(void *, CUdeviceptr, size_t) = sym(cu, "cuMemcpyDtoH_v2");
    CUresult (*cuMemFree)(CUdeviceptr) = sym(cu, "cuMemFree_v2");
    if (!cuInit || !cuGetErrorName || !cuDeviceGetCount || !cuDeviceGet || !cuDeviceGetName ||
        !cuDeviceGetAttribute || !cuCtxCreate || !cuMemAlloc || !cuMemsetD8 || !cuMemcpyDtoH ||
        !cuMemFree)
        return 1;
    const char *name = "?";
    CUresult r = cuInit(0);
    cuGetErrorName(r, &name);
    printf("libcuda: cuInit=%d (%s)\n", r, name);
    if (r != 0) return 0; /* the library ran and answered: no driver here */
    int n = 0, sms = 0;
    CUdevice dev;
    char devname[256] = "";
    if (cuDeviceGetCount(&n) || cuDeviceGet(&dev, 0) || cuDeviceGetName(devname, sizeof devname, dev) ||
        cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev)) {
        printf("device query failed\n");
        return 2;
    }
    printf("devices: %d\ndevice 0: %s, %d SMs\n", n, devname, sms);
    CUcontext ctx;
    r = cuCtxCreate(&ctx, 0, dev);
    if (r) {
        cuGetErrorName(r, &name);
        printf("context: cuCtxCreate=%d (%s)\n", r, name);
        return 2;
    }
    if (cuCtxGetExecAffinity) {
        CUexecAffinityParam p;
        memset(&p, 0, sizeof p);
        r = cuCtxGetExecAffinity(&p, 0);
        if (r == 0) printf("context: SM count %u\n", p.param.smCount.val);
        else printf("context: cuCtxGetExecAffinity=%d\n", r);
    }
    const size_t size = 1 << 20;
    CUdeviceptr d;
    unsigned char *h = malloc(size);
    if (!h || cuMemAlloc(&d, size) || cuMemsetD8(d, 0xA5, size) || cuMemcpyDtoH(h, d, size)) {
        printf("memory: allocation, set or copy failed\n");
        return 2;
    }
    for (size_t i = 0; i < size; i++)
        if (h[i] != 0xA5) {
            printf("memory: byte %zu is %#x, not 0xa5\n", i, h[i]);
            return 2;
        }
    printf("memory: 1 MiB allocated, set and read back: ok\n");
    fflush(stdout);
    if (hold > 0) sleep(hold);
    cuMemFree(d);
    free(h);
    return 0;
}

static int nvml(void) {
    void *ml = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!ml) {
        printf("nvml: dlopen failed: %s\n", dlerror());
        return 1;
    }
    int (*nvmlInit)(void) = sym(ml, "nvmlInit_v2");
    const char *(*nvmlErrorString)(int) = sym(ml, "nvmlErrorString");
    int (*nvmlDeviceGetCount)(unsigned *) = sym(ml, "nvmlDeviceGetCount_v2");
    if (!nvmlInit || !nvmlErrorString || !nvmlDeviceGetCount) return 1;
    int r = nvmlInit();
    printf("nvml: nvmlInit_v2=%d (%s)\n", r, nvmlErrorString(r));
    if (r == 0) {
        unsigned n = 0;
        nvmlDeviceGetCount(&n);
        printf("nvml devices: %u\n", n);
    }
    return 0;
}

int main(int argc, char **argv) {
    int hold = 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--hold") && i + 1 < argc) hold = atoi(argv[++i]);
    int c = cuda(hold);
    int m = nvml();
    fflush(stdout);
    if (c == 2) return 2;
    return (c || m) ? 1 : 0;
}
