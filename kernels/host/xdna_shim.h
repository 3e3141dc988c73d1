/* xdna_shim.h: the small C ABI between the plugin and the XDNA2 NPU.
 *
 * The plugin (Rust) loads a shared library implementing this header at run time (dlopen), so one
 * plugin binary runs with or without XRT. Two implementations:
 *
 *   xdna_shim_xrt.cpp  over XRT's C++ API (xrt::device, xrt::xclbin, register_xclbin,
 *                      xrt::hw_context, xrt::kernel, xrt::bo, xrt::run): the real device;
 *   xdna_shim_emu.c    a CPU emulation of the same calls, running the GEMM exactly as the kernel
 *                      does (same tiles, same padding, int8 x int8 -> int32): the tests' device.
 *
 * Everything the device computes is one operation, the int8 GEMM of gemm_config.h:
 *
 *   C (m x n, int32, row-major) = A (m x k, int8) * B (k x n, int8)
 *
 * with m a multiple of XDNA_ARRAY_ROWS * XDNA_TILE_M up to XDNA_GEMM_M_MAX, k a multiple of
 * XDNA_TILE_K, n a multiple of XDNA_ARRAY_COLS * XDNA_TILE_N. One array configuration (one
 * xclbin, one kernel) serves every shape: a shape is a launch's runtime parameters
 * (xdna_gemm_params), which its instruction sequence writes into the compute tiles before
 * moving the data. A and B are handed over pre-tiled, in the order the compute tiles consume
 * them, so that every DMA transfer of the design is a plain linear copy:
 *
 *   A: tiles of XDNA_TILE_M x XDNA_TILE_K, tile (mt, kt) at ((mt * k/TILE_K) + kt) * TILE_M*TILE_K;
 *      inside a tile, MMUL_R x MMUL_S blocks in row-major block order, each block row-major.
 *      Element A[r][c] is at
 *        ((((mt*KT + kt)*(TILE_M/R) + mb)*(TILE_K/S) + kb)*R + u)*S + v
 *      with r = mt*TILE_M + mb*R + u, c = kt*TILE_K + kb*S + v, KT = k/TILE_K.
 *   B: tiles of XDNA_TILE_K x XDNA_TILE_N, tile (nt, kt) at ((nt * KT) + kt) * TILE_K*TILE_N
 *      (all of a column panel's K tiles one after the other); inside a tile MMUL_S x MMUL_T blocks
 *      in row-major block order, each block row-major. Element B[r][c] is at
 *        ((((nt*KT + kt)*(TILE_K/S) + kb)*(TILE_N/T) + nb)*S + u)*T + v
 *      with r = kt*TILE_K + kb*S + u, c = nt*TILE_N + nb*T + v.
 *   C: plain row-major m x n int32 (the memory tiles undo the kernel's R x T blocking).
 *
 * Conventions: functions returning int return 0 on success and -1 on failure; functions returning
 * a pointer return NULL on failure. After a failure xdna_last_error() describes it (per thread).
 * A device and what was made from it are used from one thread at a time.
 */
#ifndef WHISPERENCNPU_XDNA_SHIM_H
#define WHISPERENCNPU_XDNA_SHIM_H

#include <stddef.h>
#include <stdint.h>

#include "../gemm_config.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a signature or a layout above changes; the plugin refuses other versions.
 * 2: one configuration for every shape (xdna_load_config + xdna_load_sequence, runtime
 *    parameters, launch counters) instead of one kernel per shape. */
#define XDNA_SHIM_ABI_VERSION 2

typedef struct xdna_device xdna_device;
typedef struct xdna_config xdna_config;
typedef struct xdna_sequence xdna_sequence;
typedef struct xdna_buffer xdna_buffer;

/* The kernel argument a buffer is for (the memory group XRT allocates it in). */
typedef enum xdna_buffer_role {
  XDNA_BUFFER_A = 0,
  XDNA_BUFFER_B = 1,
  XDNA_BUFFER_C = 2,
} xdna_buffer_role;

typedef enum xdna_sync_direction {
  XDNA_SYNC_TO_DEVICE = 0,
  XDNA_SYNC_FROM_DEVICE = 1,
} xdna_sync_direction;

/* The runtime parameters of one launch: what its instruction sequence writes into every compute
 * tile (kernels/iron/gemm.py) and how it moves the data. The GEMM is
 *   m = m_blocks * ARRAY_ROWS * TILE_M,  k = k_tiles * TILE_K,  n = n_blocks * ARRAY_COLS * TILE_N;
 * each compute tile computes m_blocks * n_blocks output tiles of k_tiles products each. */
typedef struct xdna_gemm_params {
  uint32_t m_blocks;
  uint32_t k_tiles;
  uint32_t n_blocks;
} xdna_gemm_params;

/* What the device did so far: launches, and how often a launch needed another array
 * configuration than the one loaded (a reconfiguration: a new PDI for the whole array). */
typedef struct xdna_counters {
  uint64_t launches;
  uint64_t reconfigurations;
  uint64_t configurations_loaded;
} xdna_counters;

/* XDNA_SHIM_ABI_VERSION of the library. */
uint32_t xdna_shim_abi_version(void);

/* "xrt" for the device implementation, "emulator" for the CPU emulation. */
const char *xdna_shim_kind(void);

/* Text of the calling thread's last failure ("" if none). Valid until the next call. */
const char *xdna_last_error(void);

/* Opens the NPU. `device` is the accel node (e.g. "/dev/accel/accel0"), NULL for the default. */
xdna_device *xdna_open(const char *device);

/* Closes the device and frees every configuration, sequence and buffer made from it. NULL is
 * ignored. */
void xdna_close(xdna_device *dev);

/* Loads the array configuration: `xclbin_path` (registered, given a hardware context) and the
 * kernel `kernel_name` in it. The emulator ignores both (NULL allowed). Owned by the device. */
xdna_config *xdna_load_config(xdna_device *dev, const char *xclbin_path, const char *kernel_name);

/* Loads the instruction sequence of one shape for `config`: `insts_path` holds binary 32-bit
 * words, or text with one hex word a line if the name ends in ".txt"; `params` are the runtime
 * parameters it was generated for (the emulator runs by them and ignores the file, NULL allowed).
 * Owned by the device. */
xdna_sequence *xdna_load_sequence(xdna_config *config, const char *insts_path,
                                  const xdna_gemm_params *params);

/* A buffer of `bytes` for argument `role` of `config`'s kernel. Owned by the device; xdna_free
 * releases it earlier. */
xdna_buffer *xdna_alloc(xdna_config *config, xdna_buffer_role role, size_t bytes);
void xdna_free(xdna_buffer *buf);

/* Host view of the buffer (stable for its lifetime). */
void *xdna_map(xdna_buffer *buf);

/* Makes host writes visible to the device, or device writes visible to the host. */
int xdna_sync(xdna_buffer *buf, xdna_sync_direction direction);

/* Launches the sequence once on (a, b) into c and waits for it. The buffers must hold at least
 * m*k, k*n bytes and m*n int32 of the sequence's parameters, laid out as described above, and be
 * synced to the device (a, b) before and from it (c) after. */
int xdna_run(xdna_sequence *seq, xdna_buffer *a, xdna_buffer *b, xdna_buffer *c);

/* The device's counters since it was opened. */
int xdna_counters_get(xdna_device *dev, xdna_counters *out);

#ifdef __cplusplus
}
#endif

#endif
