/* nbdkit backup plugin (being written). */
#include <config.h>
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
static void *backup_open (int readonly) { return NBDKIT_HANDLE_NOT_NEEDED; }
static int64_t backup_get_size (void *h) { return 0; }
static int backup_pread (void *h, void *buf, uint32_t count, uint64_t offset, uint32_t flags) { return 0; }
static struct nbdkit_plugin plugin = { .name = "backup", .open = backup_open, .get_size = backup_get_size, .pread = backup_pread };
NBDKIT_REGISTER_PLUGIN (plugin)
