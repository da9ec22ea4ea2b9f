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
 * `gpushare status` while other clients run). With --kernels SECONDS it
 * then runs a small kernel (PTX below, compiled by the driver: no toolkit
 * needed) over and over for that long, each launch waited for, and prints
 *   kernels: <n> in <s> s, <rate>/s
 * Exit 0 when every library loaded; 1 when one did not; 2 when the GPU
 * work failed.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;
typedef void *CUmodule;
typedef void *CUfunction;
typedef struct {
    int type; /* CU_EXEC_AFFINITY_TYPE_SM_COUNT = 0 */
    union { struct { unsigned int val; } smCount; } param;
} CUexecAffinityParam;
#define CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT 16

/* Each thread runs ITERS dependent multiply-adds and stores its result:
 * a fixed amount of SM work per launch. */
static const char PTX[] =
    ".version 6.0\n"
    ".target sm_50\n"
    ".address_size 64\n"
    ".visible .entry spin(.param .u64 out, .param .u32 iters)\n"
    "{\n"
    "  .reg .pred p;\n"
    "  .reg .b32 r<6>;\n"
    "  .reg .f32 f<3>;\n"
    "  .reg .b64 rd<4>;\n"
    "  ld.param.u64 rd1, [out];\n"
    "  ld.param.u32 r1, [iters];\n"
    "  mov.u32 r2, %tid.x;\n"
    "  mov.u32 r3, %ctaid.x;\n"
    "  mov.u32 r4, %ntid.x;\n"
    "  mad.lo.s32 r2, r3, r4, r2;\n"
    "  cvt.rn.f32.u32 f1, r2;\n"
    "  mov.u32 r5, 0;\n"
    "LOOP:\n"
    "  fma.rn.f32 f1, f1, 0f3F7FFFFF, 0f3F800000;\n"
    "  add.u32 r5, r5, 1;\n"
    "  setp.lt.u32 p, r5, r1;\n"
    "  @p bra LOOP;\n"
    "  cvta.to.global.u64 rd2, rd1;\n"
    "  mul.wide.u32 rd3, r2, 4;\n"
    "  add.s64 rd2, rd2, rd3;\n"
    "  st.global.f32 [rd2], f1;\n"
    "  ret;\n"
    "}\n";
#define BLOCKS 256
#define THREADS 256
#define ITERS 16384

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *sym(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) printf("missing symbol: %s\n", name);
    return p;
}

static int cuda(int hold, int kernels) {
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
    if (kernels > 0) {
        CUresult (*cuModuleLoadData)(CUmodule *, const void *) = sym(cu, "cuModuleLoadData");
        CUresult (*cuModuleGetFunction)(CUfunction *, CUmodule, const char *) = sym(cu, "cuModuleGetFunction");
        CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                   unsigned, void *, void **, void **) = sym(cu, "cuLaunchKernel");
        CUresult (*cuCtxSynchronize)(void) = sym(cu, "cuCtxSynchronize");
        if (!cuModuleLoadData || !cuModuleGetFunction || !cuLaunchKernel || !cuCtxSynchronize) return 2;
        CUmodule mod;
        CUfunction fn;
        CUdeviceptr out;
        r = cuModuleLoadData(&mod, PTX);
        if (!r) r = cuModuleGetFunction(&fn, mod, "spin");
        if (!r) r = cuMemAlloc(&out, (size_t)BLOCKS * THREADS * 4);
        if (r) {
            cuGetErrorName(r, &name);
            printf("kernels: the kernel did not load: %d (%s)\n", r, name);
            return 2;
        }
        unsigned iters = ITERS;
        void *params[] = {&out, &iters};
        long n = 0;
        double start = now_s(), end = start + kernels, t = start;
        while (t < end) {
            r = cuLaunchKernel(fn, BLOCKS, 1, 1, THREADS, 1, 1, 0, NULL, params, NULL);
            if (!r) r = cuCtxSynchronize();
            if (r) {
                cuGetErrorName(r, &name);
                printf("kernels: launch %ld failed: %d (%s)\n", n, r, name);
                return 2;
            }
            n++;
            t = now_s();
        }
        printf("kernels: %ld in %.2f s, %.1f/s\n", n, t - start, n / (t - start));
        cuMemFree(out);
    }
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
    int hold = 0, kernels = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--hold") && i + 1 < argc) hold = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--kernels") && i + 1 < argc) kernels = atoi(argv[++i]);
    }
    int c = cuda(hold, kernels);
    int m = nvml();
    fflush(stdout);
    if (c == 2) return 2;
    return (c || m) ? 1 : 0;
}
