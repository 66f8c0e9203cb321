/* A stand-in for the NVIDIA driver's libnvidia-ml.so.1, built by the tests with gcc.
 *
 * It exports the NVML entry points that pynvml (nvidia-ml-py) calls for warmstart, with the
 * same C signatures, so the real pynvml code path runs against it. What it reports is read
 * from the environment when nvmlInitWithFlags is called:
 *
 *   FAKE_NVML_INIT_ERROR  an NVML return code for init to fail with (9: driver not loaded, ...)
 *   FAKE_NVML_DRIVER      driver version string            (default "580.82.07")
 *   FAKE_NVML_CUDA        CUDA driver version, 12080 = 12.8 (default 12080)
 *   FAKE_NVML_DEVICES     devices separated by ';', each "name|memory MiB|major.minor|mig"
 *                         where mig is 0, 1 or "none" (not supported); empty: no devices
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3, NVML_ERROR_INSUFFICIENT_SIZE = 7,
};

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

#define MAX_DEVICES 16
struct fake_device {
    char name[96];
    unsigned long long memory_mib;
    int cc_major, cc_minor;
    int mig; /* -1: not supported */
};
typedef struct fake_device *nvmlDevice_t;

static struct fake_device devices[MAX_DEVICES];
static unsigned int device_count;
static int initialised;

static const char *env_or(const char *name, const char *fallback) {
    const char *value = getenv(name);
    return value ? value : fallback;
}

static void load_devices(void) {
    char *spec = strdup(env_or("FAKE_NVML_DEVICES", ""));
    char *saveptr = NULL;
    device_count = 0;
    for (char *item = strtok_r(spec, ";", &saveptr); item && device_count < MAX_DEVICES;
         item = strtok_r(NULL, ";", &saveptr)) {
        struct fake_device *d = &devices[device_count];
        char mig[8] = "none";
        if (sscanf(item, "%95[^|]|%llu|%d.%d|%7s", d->name, &d->memory_mib, &d->cc_major,
                   &d->cc_minor, mig) < 4)
            continue;
        d->mig = strcmp(mig, "none") == 0 ? -1 : atoi(mig);
        device_count++;
    }
    free(spec);
}

static nvmlReturn_t copy_out(const char *text, char *buf, unsigned int length) {
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(buf, text);
    return NVML_SUCCESS;
}

#define REQUIRE_INIT() do { if (!initialised) return NVML_ERROR_UNINITIALIZED; } while (0)

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    int error = atoi(env_or("FAKE_NVML_INIT_ERROR", "0"));
    if (error) return error;
    load_devices();
    initialised = 1;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    REQUIRE_INIT();
    initialised = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 9: return "Driver Not Loaded";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    REQUIRE_INIT();
    return copy_out(env_or("FAKE_NVML_DRIVER", "580.82.07"), version, length);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    REQUIRE_INIT();
    *version = atoi(env_or("FAKE_NVML_CUDA", "12080"));
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    return nvmlSystemGetCudaDriverVersion(version);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    REQUIRE_INIT();
    *count = device_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    REQUIRE_INIT();
    if (index >= device_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    REQUIRE_INIT();
    return copy_out(device->name, name, length);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    char text[80];
    REQUIRE_INIT();
    snprintf(text, sizeof text, "GPU-fa4e0000-0000-4000-8000-%012ld", (long)(device - devices));
    return copy_out(text, uuid, length);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    REQUIRE_INIT();
    memory->total = device->memory_mib << 20;
    memory->used = (device->memory_mib / 64) << 20; /* a driver always holds a little */
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    REQUIRE_INIT();
    *major = device->cc_major;
    *minor = device->cc_minor;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    REQUIRE_INIT();
    if (device->mig < 0) return NVML_ERROR_NOT_SUPPORTED;
    *current = *pending = (unsigned int)device->mig;
    return NVML_SUCCESS;
}
