// xdna_shim_xrt.cpp: the xdna_shim.h ABI over XRT's C++ API, for the XDNA / XDNA2 NPU
// (amdxdna driver). Needs an XRT with hardware contexts (xrt::hw_context and
// device::register_xclbin: XRT 2.14 or newer; for the NPU, the XRT that the amdxdna driver's
// repository, amd/xdna-driver, builds with its plugin).
//
// The flow XDNA needs: open xrt::device, read the xclbin, device.register_xclbin(xclbin), make an
// xrt::hw_context for its uuid, take the xrt::kernel by name from that context (xdna_load_config:
// the array configuration, loaded once); put each shape's instruction sequence in a buffer of the
// kernel's instruction group (xdna_load_sequence); allocate xrt::bo in the memory group of each
// kernel argument (instructions: group_id(1); A, B, C: 3, 4, 5), and run with opcode 3 (the NPU's
// "run a DPU instruction sequence"):
//     run = kernel(3, instructions, n_words, a, b, c); run.wait();
// A launch of another configuration than the previous launch's makes the firmware load that
// configuration's PDI first: counted as a reconfiguration.
//
// Build: make -C kernels shim (or see kernels/README.md).
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <list>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "xrt/xrt_bo.h"
#include "xrt/xrt_device.h"
#include "xrt/xrt_hw_context.h"
#include "xrt/xrt_kernel.h"
#include "xrt/experimental/xrt_xclbin.h"

#include "xdna_shim.h"

namespace {

thread_local std::string last_error;

constexpr const char *kDefaultNode = "/dev/accel/accel0";
constexpr const char *kAccelPrefix = "/dev/accel/accel";

constexpr int kOpcodeRunInstructions = 3;
constexpr int kArgInstructions = 1;
constexpr int kArgA = 3;

// The instruction sequence: binary little-endian 32-bit words, or (".txt") one hex word a line.
std::vector<uint32_t> read_instructions(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw std::runtime_error("cannot open instruction file '" + path + "': " + std::strerror(errno));
  std::vector<uint32_t> words;
  if (path.size() > 4 && path.compare(path.size() - 4, 4, ".txt") == 0) {
    std::string line;
    while (std::getline(in, line))
      if (!line.empty())
        words.push_back(static_cast<uint32_t>(std::stoul(line, nullptr, 16)));
  } else {
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (bytes.size() % 4 != 0)
      throw std::runtime_error("instruction file '" + path + "' is not a whole number of words");
    words.resize(bytes.size() / 4);
    std::memcpy(words.data(), bytes.data(), bytes.size());
  }
  if (words.empty())
    throw std::runtime_error("instruction file '" + path + "' is empty");
  return words;
}

}  // namespace

struct xdna_buffer {
  xdna_device *dev;
  xdna_buffer_role role;
  xrt::bo bo;
};

struct xdna_config {
  xdna_device *dev;
  std::string name;
  xrt::kernel kernel;
};

struct xdna_sequence {
  xdna_config *config;
  xdna_gemm_params params;
  xrt::bo instructions;
  uint32_t n_words;
};

struct xdna_device {
  xrt::device device;
  // One registered xclbin and hardware context per xclbin file, shared by its kernels.
  std::map<std::string, xrt::hw_context> contexts;
  // Destroyed in reverse order: buffers and sequences before configurations and contexts.
  std::list<xdna_config> configs;
  std::list<xdna_sequence> sequences;
  std::list<xdna_buffer> buffers;
  const xdna_config *current = nullptr;
  xdna_counters counters{};
};

// Runs f, turning exceptions into the ABI's error convention.
template <typename T, typename F> static T guarded(T failed, F f) {
  try {
    return f();
  } catch (const std::exception &e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return failed;
}

extern "C" {

uint32_t xdna_shim_abi_version(void) { return XDNA_SHIM_ABI_VERSION; }

const char *xdna_shim_kind(void) { return "xrt"; }

const char *xdna_last_error(void) { return last_error.c_str(); }

xdna_device *xdna_open(const char *device) {
  return guarded<xdna_device *>(nullptr, [&] {
    // XRT enumerates NPUs by index; the amdxdna driver's device N is /dev/accel/accelN.
    const std::string node = device ? device : kDefaultNode;
    unsigned index = 0;
    if (node.compare(0, std::strlen(kAccelPrefix), kAccelPrefix) == 0) {
      const char *digits = node.c_str() + std::strlen(kAccelPrefix);
      char *end = nullptr;
      errno = 0;
      unsigned long n = std::strtoul(digits, &end, 10);
      if (end == digits || *end != '\0' || errno != 0 || n > 255)
        throw std::runtime_error("'" + node + "' is not an accel node (" + kAccelPrefix + "N)");
      index = static_cast<unsigned>(n);
    }
    // XRT's own message for a missing device does not name the node; this one does.
    struct stat st;
    if (stat(node.c_str(), &st) != 0)
      throw std::runtime_error("no NPU device node " + node + ": " + std::strerror(errno));
    auto dev = std::make_unique<xdna_device>();
    dev->device = xrt::device(index);
    return dev.release();
  });
}

void xdna_close(xdna_device *dev) {
  // Buffers, sequences and configurations go before the contexts and the device (members in
  // reverse order).
  delete dev;
}

xdna_config *xdna_load_config(xdna_device *dev, const char *xclbin_path, const char *kernel_name) {
  return guarded<xdna_config *>(nullptr, [&]() -> xdna_config * {
    if (!dev || !xclbin_path || !kernel_name)
      throw std::runtime_error("xdna_load_config: missing argument");
    auto ctx = dev->contexts.find(xclbin_path);
    if (ctx == dev->contexts.end()) {
      xrt::xclbin xclbin(std::string{xclbin_path});
      dev->device.register_xclbin(xclbin);
      ctx = dev->contexts.emplace(xclbin_path, xrt::hw_context(dev->device, xclbin.get_uuid()))
                .first;
    }
    dev->configs.push_back(xdna_config{dev, kernel_name, xrt::kernel(ctx->second, kernel_name)});
    if (!dev->current)
      dev->current = &dev->configs.back();
    dev->counters.configurations_loaded++;
    return &dev->configs.back();
  });
}

xdna_sequence *xdna_load_sequence(xdna_config *config, const char *insts_path,
                                  const xdna_gemm_params *params) {
  return guarded<xdna_sequence *>(nullptr, [&]() -> xdna_sequence * {
    if (!config || !insts_path || !params)
      throw std::runtime_error("xdna_load_sequence: missing argument");
    if (params->m_blocks == 0 || params->k_tiles == 0 || params->n_blocks == 0 ||
        params->m_blocks > XDNA_GEMM_M_MAX / (XDNA_ARRAY_ROWS * XDNA_TILE_M))
      throw std::runtime_error("xdna_load_sequence: runtime parameters out of range");
    std::vector<uint32_t> words = read_instructions(insts_path);
    xdna_device *dev = config->dev;
    xdna_sequence q{config, *params, {}, static_cast<uint32_t>(words.size())};
    q.instructions = xrt::bo(dev->device, words.size() * sizeof(uint32_t),
                             xrt::bo::flags::cacheable, config->kernel.group_id(kArgInstructions));
    std::memcpy(q.instructions.map<void *>(), words.data(), words.size() * sizeof(uint32_t));
    q.instructions.sync(XCL_BO_SYNC_BO_TO_DEVICE);
    dev->sequences.push_back(std::move(q));
    return &dev->sequences.back();
  });
}

xdna_buffer *xdna_alloc(xdna_config *config, xdna_buffer_role role, size_t bytes) {
  return guarded<xdna_buffer *>(nullptr, [&]() -> xdna_buffer * {
    if (!config || bytes == 0)
      throw std::runtime_error("xdna_alloc: no configuration, or 0 bytes");
    xdna_device *dev = config->dev;
    xrt::bo bo(dev->device, bytes, xrt::bo::flags::host_only,
               config->kernel.group_id(kArgA + static_cast<int>(role)));
    dev->buffers.push_back(xdna_buffer{dev, role, std::move(bo)});
    return &dev->buffers.back();
  });
}

void xdna_free(xdna_buffer *buf) {
  if (!buf)
    return;
  auto &list = buf->dev->buffers;
  for (auto it = list.begin(); it != list.end(); ++it)
    if (&*it == buf) {
      list.erase(it);
      return;
    }
}

void *xdna_map(xdna_buffer *buf) {
  return guarded<void *>(nullptr, [&]() -> void * {
    if (!buf)
      throw std::runtime_error("xdna_map: no buffer");
    return buf->bo.map<void *>();
  });
}

int xdna_sync(xdna_buffer *buf, xdna_sync_direction direction) {
  return guarded<int>(-1, [&] {
    if (!buf)
      throw std::runtime_error("xdna_sync: no buffer");
    buf->bo.sync(direction == XDNA_SYNC_TO_DEVICE ? XCL_BO_SYNC_BO_TO_DEVICE
                                                  : XCL_BO_SYNC_BO_FROM_DEVICE);
    return 0;
  });
}

int xdna_run(xdna_sequence *seq, xdna_buffer *a, xdna_buffer *b, xdna_buffer *c) {
  return guarded<int>(-1, [&] {
    if (!seq || !a || !b || !c)
      throw std::runtime_error("xdna_run: missing sequence or buffer");
    const xdna_gemm_params &p = seq->params;
    const size_t m = size_t(p.m_blocks) * XDNA_ARRAY_ROWS * XDNA_TILE_M;
    const size_t k = size_t(p.k_tiles) * XDNA_TILE_K;
    const size_t n = size_t(p.n_blocks) * XDNA_ARRAY_COLS * XDNA_TILE_N;
    if (a->bo.size() < m * k || b->bo.size() < k * n || c->bo.size() < m * n * sizeof(int32_t))
      throw std::runtime_error("xdna_run: buffers too small for the sequence's GEMM");
    xdna_device *dev = seq->config->dev;
    if (dev->current != seq->config) {
      dev->counters.reconfigurations++;
      dev->current = seq->config;
    }
    dev->counters.launches++;
    xrt::kernel &kernel = seq->config->kernel;
    xrt::run run = kernel(kOpcodeRunInstructions, seq->instructions, seq->n_words, a->bo, b->bo,
                          c->bo);
    ert_cmd_state state = run.wait();
    if (state != ERT_CMD_STATE_COMPLETED) {
      std::ostringstream msg;
      msg << "kernel " << seq->config->name << " ended in state " << static_cast<int>(state);
      throw std::runtime_error(msg.str());
    }
    return 0;
  });
}

int xdna_counters_get(xdna_device *dev, xdna_counters *out) {
  return guarded<int>(-1, [&] {
    if (!dev || !out)
      throw std::runtime_error("xdna_counters_get: missing device or output");
    *out = dev->counters;
    return 0;
  });
}

}  // extern "C"
