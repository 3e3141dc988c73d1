/* xdna_shim_emu.c: the xdna_shim.h ABI emulated on the CPU.
 *
 * It stands in for the NPU in the tests: buffers have a host side and a separate "device" side
 * that only xdna_sync copies between (so a missing sync shows up as wrong numbers, as it would on
 * the device), and xdna_run runs the GEMM the way the IRON design in kernels/iron/gemm.py does,
 * driven by the same runtime parameters (xdna_gemm_params) the launch's instruction sequence
 * writes into the compute tiles: the 4 x 8 compute tiles each own a set of 64 x 64 output tiles
 * (m_blocks * n_blocks of them, k_tiles products each), read A and B tiles from
 * the pre-tiled buffers in the order the DMAs deliver them, run the same blocked 8 x 8 x 8 int8
 * micro-kernel as kernels/aie/gemm_i8.cc with int32 accumulators, and hand the tile back
 * un-blocked into row-major C, as the memory tiles do. Integer arithmetic is exact, so its result
 * is the device's, bit for bit. It counts launches and reconfigurations (a launch of another
 * configuration than the array holds) as the device would see them.
 *
 * The emulated compute tiles run on up to XDNA_EMU_THREADS host threads (default: one per
 * online CPU).
 */
#define _POSIX_C_SOURCE 200809L /* sysconf */

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xdna_shim.h"

#define TM XDNA_TILE_M
#define TK XDNA_TILE_K
#define TN XDNA_TILE_N
#define MR XDNA_MMUL_R
#define MS XDNA_MMUL_S
#define MT XDNA_MMUL_T
#define ROWS XDNA_ARRAY_ROWS
#define COLS XDNA_ARRAY_COLS
#define CORES (ROWS * COLS)

_Static_assert(TM % (2 * MR) == 0 && TK % MS == 0 && TN % (2 * MT) == 0,
               "tiles must hold whole 2 x 2 groups of mmul blocks");

struct xdna_buffer {
  struct xdna_device *dev;
  struct xdna_buffer *prev, *next;
  xdna_buffer_role role;
  size_t bytes;
  void *host;   /* what xdna_map returns */
  void *device; /* what the emulated array reads and writes */
};

struct xdna_config {
  struct xdna_device *dev;
  struct xdna_config *next;
};

struct xdna_sequence {
  struct xdna_config *config;
  struct xdna_sequence *next;
  xdna_gemm_params params;
};

struct xdna_device {
  struct xdna_config *configs;
  struct xdna_sequence *sequences;
  struct xdna_buffer *buffers;
  /* The configuration the array holds (the first loaded, then the last launched). */
  const struct xdna_config *current;
  xdna_counters counters;
};

static _Thread_local char last_error[512];

static void set_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
}

uint32_t xdna_shim_abi_version(void) { return XDNA_SHIM_ABI_VERSION; }

const char *xdna_shim_kind(void) { return "emulator"; }

const char *xdna_last_error(void) { return last_error; }

xdna_device *xdna_open(const char *device) {
  (void)device; /* there is no device: any name opens the emulation */
  xdna_device *dev = calloc(1, sizeof *dev);
  if (!dev)
    set_error("emulator: out of memory");
  return dev;
}

void xdna_close(xdna_device *dev) {
  if (!dev)
    return;
  while (dev->buffers)
    xdna_free(dev->buffers);
  while (dev->sequences) {
    struct xdna_sequence *q = dev->sequences;
    dev->sequences = q->next;
    free(q);
  }
  while (dev->configs) {
    struct xdna_config *c = dev->configs;
    dev->configs = c->next;
    free(c);
  }
  free(dev);
}

xdna_config *xdna_load_config(xdna_device *dev, const char *xclbin_path, const char *kernel_name) {
  (void)xclbin_path;
  (void)kernel_name;
  if (!dev) {
    set_error("emulator: xdna_load_config without a device");
    return NULL;
  }
  struct xdna_config *c = calloc(1, sizeof *c);
  if (!c) {
    set_error("emulator: out of memory");
    return NULL;
  }
  c->dev = dev;
  c->next = dev->configs;
  dev->configs = c;
  if (!dev->current)
    dev->current = c;
  dev->counters.configurations_loaded++;
  return c;
}

xdna_sequence *xdna_load_sequence(xdna_config *config, const char *insts_path,
                                  const xdna_gemm_params *params) {
  (void)insts_path;
  if (!config || !params) {
    set_error("emulator: xdna_load_sequence without a configuration or parameters");
    return NULL;
  }
  const uint32_t m_max_blocks = XDNA_GEMM_M_MAX / (ROWS * TM);
  if (params->m_blocks == 0 || params->k_tiles == 0 || params->n_blocks == 0 ||
      params->m_blocks > m_max_blocks) {
    set_error("emulator: runtime parameters m_blocks %u, k_tiles %u, n_blocks %u out of range "
              "(each at least 1, m_blocks at most %u)",
              params->m_blocks, params->k_tiles, params->n_blocks, m_max_blocks);
    return NULL;
  }
  struct xdna_sequence *q = calloc(1, sizeof *q);
  if (!q) {
    set_error("emulator: out of memory");
    return NULL;
  }
  q->config = config;
  q->params = *params;
  q->next = config->dev->sequences;
  config->dev->sequences = q;
  return q;
}

int xdna_counters_get(xdna_device *dev, xdna_counters *out) {
  if (!dev || !out) {
    set_error("emulator: xdna_counters_get without a device or an output");
    return -1;
  }
  *out = dev->counters;
  return 0;
}

xdna_buffer *xdna_alloc(xdna_config *config, xdna_buffer_role role, size_t bytes) {
  if (!config || bytes == 0) {
    set_error("emulator: xdna_alloc without a configuration or of 0 bytes");
    return NULL;
  }
  struct xdna_buffer *b = calloc(1, sizeof *b);
  if (b) {
    b->host = calloc(1, bytes);
    b->device = calloc(1, bytes);
  }
  if (!b || !b->host || !b->device) {
    if (b) {
      free(b->host);
      free(b->device);
      free(b);
    }
    set_error("emulator: cannot allocate %zu bytes", bytes);
    return NULL;
  }
  b->dev = config->dev;
  b->role = role;
  b->bytes = bytes;
  b->next = b->dev->buffers;
  if (b->next)
    b->next->prev = b;
  b->dev->buffers = b;
  return b;
}

void xdna_free(xdna_buffer *b) {
  if (!b)
    return;
  if (b->prev)
    b->prev->next = b->next;
  else
    b->dev->buffers = b->next;
  if (b->next)
    b->next->prev = b->prev;
  free(b->host);
  free(b->device);
  free(b);
}

void *xdna_map(xdna_buffer *b) {
  if (!b) {
    set_error("emulator: xdna_map of no buffer");
    return NULL;
  }
  return b->host;
}

int xdna_sync(xdna_buffer *b, xdna_sync_direction direction) {
  if (!b) {
    set_error("emulator: xdna_sync of no buffer");
    return -1;
  }
  if (direction == XDNA_SYNC_TO_DEVICE)
    memcpy(b->device, b->host, b->bytes);
  else
    memcpy(b->host, b->device, b->bytes);
  return 0;
}

/* ---- the emulated array ------------------------------------------------------------------ */

/* The compute tile's micro-kernel, as kernels/aie/gemm_i8.cc: c (TM x TN, MR x MT blocks) +=
 * a (TM x TK, MR x MS blocks) * b (TK x TN, MS x MT blocks). The AIE code walks 2 x 2 groups of
 * output blocks to keep four accumulators busy; integer sums do not depend on the order, so this
 * walks one block at a time. */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
__attribute__((target_clones("avx2", "default")))
#endif
#endif
static void
tile_kernel(const int8_t *restrict a, const int8_t *restrict b, int32_t *restrict c) {
  for (int mb = 0; mb < TM / MR; mb++) {
    for (int nb = 0; nb < TN / MT; nb++) {
      int32_t acc[MR * MT];
      int32_t *cb = c + (mb * (TN / MT) + nb) * MR * MT;
      memcpy(acc, cb, sizeof acc);
      for (int kb = 0; kb < TK / MS; kb++) {
        const int8_t *ab = a + (mb * (TK / MS) + kb) * MR * MS;
        const int8_t *bb = b + (kb * (TN / MT) + nb) * MS * MT;
        for (int u = 0; u < MR; u++)
          for (int w = 0; w < MS; w++) {
            int32_t x = ab[u * MS + w];
            for (int v = 0; v < MT; v++)
              acc[u * MT + v] += x * (int32_t)bb[w * MT + v];
          }
      }
      memcpy(cb, acc, sizeof acc);
    }
  }
}

struct run {
  xdna_gemm_params p;
  const int8_t *a, *b;
  int32_t *c;
  int threads;
  int index;
};

/* One compute tile (row i, column j of the array) through its whole share of the launch, as the
 * core program of the IRON design: take the runtime parameters, then for each of its output
 * tiles zero, accumulate k_tiles products, emit. */
static void run_core(const struct run *r, int i, int j) {
  const uint32_t kt_count = r->p.k_tiles;
  const size_t n = (size_t)r->p.n_blocks * COLS * TN;
  int32_t tile[TM * TN];
  for (uint32_t mi = 0; mi < r->p.m_blocks; mi++) {
    for (uint32_t nj = 0; nj < r->p.n_blocks; nj++) {
      const uint32_t mt = mi * ROWS + i, nt = nj * COLS + j;
      memset(tile, 0, sizeof tile);
      /* The DMAs stream the A panel of row block mt and the B panel of column block nt, one
       * K tile of each at a time. */
      const int8_t *a = r->a + (size_t)mt * kt_count * TM * TK;
      const int8_t *b = r->b + (size_t)nt * kt_count * TK * TN;
      for (uint32_t kt = 0; kt < kt_count; kt++)
        tile_kernel(a + (size_t)kt * TM * TK, b + (size_t)kt * TK * TN, tile);
      /* The memory tile un-blocks MR x MT blocks into rows of C. */
      for (int mb = 0; mb < TM / MR; mb++)
        for (int u = 0; u < MR; u++) {
          int32_t *crow = r->c + (size_t)(mt * TM + mb * MR + u) * n + nt * TN;
          for (int nb = 0; nb < TN / MT; nb++)
            memcpy(crow + nb * MT, tile + ((mb * (TN / MT) + nb) * MR + u) * MT,
                   MT * sizeof(int32_t));
        }
    }
  }
}

static void *run_thread(void *arg) {
  const struct run *r = arg;
  for (int core = r->index; core < CORES; core += r->threads)
    run_core(r, core / COLS, core % COLS);
  return NULL;
}

static int emu_threads(void) {
  const char *env = getenv("XDNA_EMU_THREADS");
  long n = env && *env ? strtol(env, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1)
    n = 1;
  if (n > CORES)
    n = CORES;
  return (int)n;
}

int xdna_run(xdna_sequence *seq, xdna_buffer *a, xdna_buffer *b, xdna_buffer *c) {
  if (!seq || !a || !b || !c) {
    set_error("emulator: xdna_run with a missing sequence or buffer");
    return -1;
  }
  struct xdna_device *dev = seq->config->dev;
  const xdna_gemm_params p = seq->params;
  if (a->dev != dev || b->dev != dev || c->dev != dev) {
    set_error("emulator: buffers of another device");
    return -1;
  }
  if (a->role != XDNA_BUFFER_A || b->role != XDNA_BUFFER_B || c->role != XDNA_BUFFER_C) {
    set_error("emulator: buffers passed in the wrong argument slots");
    return -1;
  }
  const size_t m = (size_t)p.m_blocks * ROWS * TM, k = (size_t)p.k_tiles * TK,
               n = (size_t)p.n_blocks * COLS * TN;
  if (a->bytes < m * k || b->bytes < k * n || c->bytes < m * n * sizeof(int32_t)) {
    set_error("emulator: buffers too small for the %zux%zux%zu GEMM of the sequence", m, k, n);
    return -1;
  }
  /* Another configuration than the array holds: the device would load its PDI first. */
  if (dev->current != seq->config) {
    dev->counters.reconfigurations++;
    dev->current = seq->config;
  }
  dev->counters.launches++;

  int threads = emu_threads();
  struct run runs[CORES];
  pthread_t ids[CORES];
  int started = 0;
  for (int t = 0; t < threads; t++) {
    runs[t] = (struct run){p, a->device, b->device, c->device, threads, t};
    if (t > 0) {
      if (pthread_create(&ids[t], NULL, run_thread, &runs[t]) != 0)
        break;
      started = t;
    }
  }
  /* Cores whose thread could not start are run here. */
  for (int t = started + 1; t < threads; t++)
    run_thread(&runs[t]);
  run_thread(&runs[0]);
  for (int t = 1; t <= started; t++)
    pthread_join(ids[t], NULL);
  return 0;
}
