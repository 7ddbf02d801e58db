// The native kernels' one way of running work on XLA's intra-op thread pool, shared by
// depthwise.cc and pointwise.cc (each includes it into its own anonymous namespace).

#ifndef JRELU6_NATIVE_PARALLEL_H_
#define JRELU6_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace {

// Runs body(begin, end) over [0, total) in `chunks` contiguous pieces, on the
// calling thread and the pool's. The caller works too and waits only for
// pieces that a pool thread has started, so a busy pool cannot deadlock it;
// a pool task that starts after the last piece is taken returns at once
// (the shared state outlives the call for such late tasks).
[[maybe_unused]] void ParallelFor(xla::ffi::ThreadPool& pool, int64_t total, int64_t chunks,
                                  const std::function<void(int64_t, int64_t)>& body) {
  chunks = std::max<int64_t>(1, std::min(chunks, total));
  if (chunks == 1) {
    if (total > 0) body(0, total);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  const auto* fn = &body;
  auto work = [state, fn, total, chunks]() {
    for (int64_t c; (c = state->next.fetch_add(1)) < chunks;) {
      (*fn)(c * total / chunks, (c + 1) * total / chunks);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  for (int64_t t = 0; t < helpers; ++t) {
    auto task = work;  // Schedule takes ownership of its own copy.
    pool.Schedule(std::move(task));
  }
  work();
  while (state->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

}  // namespace

#endif  // JRELU6_NATIVE_PARALLEL_H_
