// A small C shim over PyTorch's c10d (shipped inside libtorch_cpu): the TCPStore rendezvous,
// the Gloo process group, the collectives the trainer needs, and a DDP-style gradient reducer
// whose bucket all-reduces start from autograd hooks while backward is still running.
//
// Conventions: every function returns NULL on success or a malloc'd error message (free it
// with sf_free_string); C++ exceptions never cross into Rust. Tensors are tch's handles
// (`torch::Tensor*`). Handles are plain heap objects freed by their sf_*_free function.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include <torch/torch.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef SEQFORGE_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

char* dup_message(const std::string& message) {
    char* out = static_cast<char*>(std::malloc(message.size() + 1));
    if (out != nullptr) {
        std::memcpy(out, message.c_str(), message.size() + 1);
    }
    return out;
}

template <typename F>
char* guarded(const char* what, F&& body) {
    try {
        body();
        return nullptr;
    } catch (const c10::Error& e) {
        return dup_message(std::string(what) + ": " + e.what_without_backtrace());
    } catch (const std::exception& e) {
        return dup_message(std::string(what) + ": " + e.what());
    } catch (...) {
        return dup_message(std::string(what) + ": unknown C++ exception");
    }
}

struct Store {
    c10::intrusive_ptr<c10d::Store> store;
};

// A process group and the device its collectives run on: the CPU for Gloo, this rank's GPU for
// NCCL. Tensors handed to a collective on another device are staged through that device.
struct Group {
    c10::intrusive_ptr<c10d::Backend> backend;
    std::chrono::milliseconds timeout;
    c10::Device device = c10::Device(c10::kCPU);
};

// `tensors` moved to the group's device (the same tensors when they are there already).
std::vector<at::Tensor> staged(const Group& g, const std::vector<at::Tensor>& tensors) {
    std::vector<at::Tensor> out;
    out.reserve(tensors.size());
    for (const auto& t : tensors) out.push_back(t.device() == g.device ? t : t.to(g.device));
    return out;
}

// Copies staged results back into the caller's tensors where they were staged.
void unstage(const std::vector<at::Tensor>& originals, const std::vector<at::Tensor>& staged) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < originals.size(); ++i) {
        if (!originals[i].is_same(staged[i])) {
            auto& original = const_cast<at::Tensor&>(originals[i]);
            original.copy_(staged[i]);
        }
    }
}

std::vector<at::Tensor> tensors_of(void* const* tensors, size_t n) {
    std::vector<at::Tensor> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        out.push_back(*static_cast<at::Tensor*>(tensors[i]));
    }
    return out;
}

void wait_for(const c10::intrusive_ptr<c10d::Work>& work, std::chrono::milliseconds timeout) {
    if (!work->wait(timeout)) {
        throw std::runtime_error("timed out after " + std::to_string(timeout.count()) + " ms");
    }
}

// One flat buffer of gradients reduced by a single all-reduce.
struct Bucket {
    std::vector<size_t> params;  // indices into Reducer::params
    std::vector<int64_t> offsets;
    at::Tensor flat;
    size_t pending = 0;  // gradients not ready yet in the current backward
    c10::intrusive_ptr<c10d::Work> work;
    bool launched = false;
};

// DDP's reducer, reduced to what the trainer needs: parameters in a fixed order, buckets of at
// most `cap` bytes (one dtype each), an all-reduce (SUM of gradients pre-divided by the world
// size) launched for each bucket as soon as all its gradients are accumulated — in bucket order,
// so every rank issues the same collectives in the same order — and results copied back into
// `.grad` by `finish`. After the first synchronized backward the buckets are rebuilt in the
// order rank 0 saw gradients become ready (broadcast to all ranks), so that the first bucket
// is the first one ready, as DDP does.
struct Reducer {
    Group* group;
    std::vector<at::Tensor> params;
    std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
    std::vector<uintptr_t> hook_keys;
    std::vector<Bucket> buckets;
    std::vector<size_t> bucket_of;
    int64_t cap_bytes;
    bool overlap;
    bool rebuilt = false;
    // State of the current backward.
    std::mutex mu;
    bool active = false;
    size_t next_launch = 0;
    double predivide = 1.0;
    std::vector<size_t> ready_order;
    std::vector<bool> ready;
    std::string hook_error;
    // Seconds spent copying into buckets inside hooks (part of backward's time).
    double hook_seconds = 0.0;

    void build(const std::vector<size_t>& order) {
        buckets.clear();
        bucket_of.assign(params.size(), 0);
        Bucket current;
        int64_t bytes = 0;
        at::ScalarType dtype = at::ScalarType::Undefined;
        auto close = [&]() {
            if (current.params.empty()) return;
            int64_t total = 0;
            for (size_t p : current.params) {
                current.offsets.push_back(total);
                total += params[p].numel();
            }
            current.flat = at::zeros({total}, params[current.params[0]].options().requires_grad(false));
            for (size_t p : current.params) bucket_of[p] = buckets.size();
            buckets.push_back(std::move(current));
            current = Bucket();
            bytes = 0;
        };
        for (size_t p : order) {
            const auto& t = params[p];
            int64_t size = t.numel() * static_cast<int64_t>(t.element_size());
            if (!current.params.empty() && (t.scalar_type() != dtype || bytes + size > cap_bytes)) {
                close();
            }
            dtype = t.scalar_type();
            current.params.push_back(p);
            bytes += size;
        }
        close();
    }

    void copy_in(Bucket& b) {
        torch::NoGradGuard no_grad;
        for (size_t k = 0; k < b.params.size(); ++k) {
            auto& p = params[b.params[k]];
            auto view = b.flat.narrow(0, b.offsets[k], p.numel());
            const auto& g = p.grad();
            if (g.defined()) {
                view.copy_(g.reshape({-1}));
            } else {
                view.zero_();
            }
        }
        if (predivide != 1.0) b.flat.div_(predivide);
    }

    void launch(Bucket& b) {
        copy_in(b);
        std::vector<at::Tensor> tensors{b.flat};
        c10d::AllreduceOptions opts;
        opts.reduceOp = c10d::ReduceOp::SUM;
        b.work = group->backend->allreduce(tensors, opts);
        b.launched = true;
    }

    // Launches every bucket that is complete, in order (caller holds `mu`).
    void launch_ready() {
        while (next_launch < buckets.size() && buckets[next_launch].pending == 0) {
            launch(buckets[next_launch]);
            ++next_launch;
        }
    }

    void on_ready(size_t index) {
        std::lock_guard<std::mutex> lock(mu);
        if (!active || index >= ready.size() || ready[index]) return;
        ready[index] = true;
        ready_order.push_back(index);
        if (!overlap) return;
        try {
            auto start = std::chrono::steady_clock::now();
            auto& b = buckets[bucket_of[index]];
            if (b.pending > 0) --b.pending;
            launch_ready();
            hook_seconds +=
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        } catch (const c10::Error& e) {
            if (hook_error.empty()) hook_error = e.what_without_backtrace();
        } catch (const std::exception& e) {
            if (hook_error.empty()) hook_error = e.what();
        }
    }

    void prepare(bool sync, double divide) {
        std::lock_guard<std::mutex> lock(mu);
        active = sync;
        predivide = divide;
        next_launch = 0;
        ready.assign(params.size(), false);
        ready_order.clear();
        hook_error.clear();
        hook_seconds = 0.0;
        for (auto& b : buckets) {
            b.pending = b.params.size();
            b.launched = false;
            b.work.reset();
        }
    }

    // Launches what backward did not, waits for every bucket and writes the results to `.grad`.
    // Returns seconds spent waiting for communication after backward.
    double finish() {
        std::lock_guard<std::mutex> lock(mu);
        if (!active) throw std::runtime_error("finish without a synchronized backward (prepare(sync=true))");
        active = false;
        if (!hook_error.empty()) throw std::runtime_error("in a gradient hook: " + hook_error);
        // Gradients that never became ready (unused parameters, an empty batch) count as zero.
        for (auto& b : buckets) b.pending = 0;
        launch_ready();
        auto start = std::chrono::steady_clock::now();
        for (size_t i = 0; i < buckets.size(); ++i) {
            try {
                wait_for(buckets[i].work, group->timeout);
            } catch (const c10::Error& e) {
                throw std::runtime_error("all-reduce of gradient bucket " + std::to_string(i) + " failed: " + e.what_without_backtrace());
            } catch (const std::exception& e) {
                throw std::runtime_error("all-reduce of gradient bucket " + std::to_string(i) + " failed: " + e.what());
            }
        }
        double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        {
            torch::NoGradGuard no_grad;
            for (auto& b : buckets) {
                for (size_t k = 0; k < b.params.size(); ++k) {
                    auto& p = params[b.params[k]];
                    auto view = b.flat.narrow(0, b.offsets[k], p.numel()).view(p.sizes());
                    auto& g = p.mutable_grad();
                    if (g.defined()) {
                        g.copy_(view);
                    } else {
                        g = view.clone();
                    }
                }
                b.work.reset();
            }
        }
        if (!rebuilt) {
            // Rank 0's readiness order, then every parameter it did not see, by index.
            int64_t n = static_cast<int64_t>(params.size());
            auto order = at::full({n}, -1, at::kLong);
            auto acc = order.accessor<int64_t, 1>();
            std::vector<bool> seen(params.size(), false);
            int64_t k = 0;
            for (size_t p : ready_order) {
                acc[k++] = static_cast<int64_t>(p);
                seen[p] = true;
            }
            for (size_t p = 0; p < params.size(); ++p) {
                if (!seen[p]) acc[k++] = static_cast<int64_t>(p);
            }
            auto tensors = staged(*group, {order});
            c10d::BroadcastOptions opts;
            opts.rootRank = 0;
            wait_for(group->backend->broadcast(tensors, opts), group->timeout);
            unstage({order}, tensors);
            std::vector<size_t> new_order;
            std::vector<bool> taken(params.size(), false);
            for (int64_t i = 0; i < n; ++i) {
                int64_t p = order[i].item<int64_t>();
                if (p < 0 || p >= n || taken[p]) throw std::runtime_error("rank 0 sent an invalid bucket order");
                taken[p] = true;
                new_order.push_back(static_cast<size_t>(p));
            }
            build(new_order);
            rebuilt = true;
        }
        return waited;
    }
};

}  // namespace

extern "C" {

void sf_free_string(char* s) { std::free(s); }

char* sf_store_new(const char* host, uint16_t port, int64_t world_size, bool is_server,
                   int64_t timeout_ms, void** out) {
    return guarded("TCPStore", [&]() {
        c10d::TCPStoreOptions opts;
        opts.port = port;
        opts.isServer = is_server;
        opts.numWorkers = static_cast<size_t>(world_size);
        opts.waitWorkers = false;
        opts.timeout = std::chrono::milliseconds(timeout_ms);
        auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
        *out = new Store{store};
    });
}

void sf_store_free(void* store) { delete static_cast<Store*>(store); }

char* sf_store_set(void* store, const char* key, const uint8_t* data, size_t len) {
    return guarded("TCPStore set", [&]() {
        std::vector<uint8_t> value(data, data + len);
        static_cast<Store*>(store)->store->set(std::string(key), value);
    });
}

char* sf_store_get(void* store, const char* key, uint8_t** data, size_t* len) {
    return guarded("TCPStore get", [&]() {
        auto value = static_cast<Store*>(store)->store->get(std::string(key));
        *len = value.size();
        *data = static_cast<uint8_t*>(std::malloc(value.size() == 0 ? 1 : value.size()));
        if (*data == nullptr) throw std::bad_alloc();
        std::memcpy(*data, value.data(), value.size());
    });
}

void sf_free_bytes(uint8_t* data) { std::free(data); }

char* sf_store_add(void* store, const char* key, int64_t value, int64_t* out) {
    return guarded("TCPStore add", [&]() {
        *out = static_cast<Store*>(store)->store->add(std::string(key), value);
    });
}

char* sf_store_check(void* store, const char* key, bool* out) {
    return guarded("TCPStore check", [&]() {
        *out = static_cast<Store*>(store)->store->check({std::string(key)});
    });
}

char* sf_gloo_new(void* store, int64_t rank, int64_t size, const char* hostname,
                  int64_t timeout_ms, int64_t threads, void** out) {
    return guarded("ProcessGroupGloo", [&]() {
        auto timeout = std::chrono::milliseconds(timeout_ms);
        auto options = c10d::ProcessGroupGloo::Options::create(timeout);
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(std::string(hostname)));
        options->threads = static_cast<int>(threads);
        auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
            static_cast<Store*>(store)->store, static_cast<int>(rank), static_cast<int>(size), options);
        *out = new Group{pg, timeout};
    });
}

// Whether this shim was built with ProcessGroupNCCL (a CUDA libtorch with c10d's NCCL backend
// and the CUDA and NCCL headers at build time).
bool sf_has_nccl() {
#ifdef SEQFORGE_NCCL
    return true;
#else
    return false;
#endif
}

char* sf_nccl_new(void* store, int64_t rank, int64_t size, int64_t device, int64_t timeout_ms,
                  void** out) {
    return guarded("ProcessGroupNCCL", [&]() {
#ifdef SEQFORGE_NCCL
        auto timeout = std::chrono::milliseconds(timeout_ms);
        auto index = static_cast<c10::DeviceIndex>(device);
        // NCCL's communicator, barrier and streams belong to the current device.
        c10::cuda::set_device(index);
        auto options = c10d::ProcessGroupNCCL::Options::create();
        options->timeout = timeout;
        auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(
            static_cast<Store*>(store)->store, static_cast<int>(rank), static_cast<int>(size), options);
        *out = new Group{pg, timeout, c10::Device(c10::kCUDA, index)};
#else
        (void)store; (void)rank; (void)size; (void)device; (void)timeout_ms; (void)out;
        throw std::runtime_error("this build has no NCCL (its libtorch is the CPU one)");
#endif
    });
}

void sf_group_free(void* group) { delete static_cast<Group*>(group); }

char* sf_all_reduce(void* group, void* const* tensors, size_t n, int64_t op) {
    return guarded("all-reduce", [&]() {
        auto* g = static_cast<Group*>(group);
        auto list = tensors_of(tensors, n);
        c10d::AllreduceOptions opts;
        switch (op) {
            case 0: opts.reduceOp = c10d::ReduceOp::SUM; break;
            case 1: opts.reduceOp = c10d::ReduceOp::MAX; break;
            case 2: opts.reduceOp = c10d::ReduceOp::MIN; break;
            default: throw std::runtime_error("unknown reduce op " + std::to_string(op));
        }
        // One collective per tensor (Gloo's tensor lists are per-device replicas of one
        // tensor), all started before any is waited for.
        auto on_device = staged(*g, list);
        std::vector<c10::intrusive_ptr<c10d::Work>> works;
        for (auto& t : on_device) {
            std::vector<at::Tensor> one{t};
            works.push_back(g->backend->allreduce(one, opts));
        }
        for (auto& w : works) wait_for(w, g->timeout);
        unstage(list, on_device);
    });
}

char* sf_broadcast(void* group, void* const* tensors, size_t n, int64_t root) {
    return guarded("broadcast", [&]() {
        auto* g = static_cast<Group*>(group);
        auto list = tensors_of(tensors, n);
        c10d::BroadcastOptions opts;
        opts.rootRank = root;
        auto on_device = staged(*g, list);
        std::vector<c10::intrusive_ptr<c10d::Work>> works;
        for (auto& t : on_device) {
            std::vector<at::Tensor> one{t};
            works.push_back(g->backend->broadcast(one, opts));
        }
        for (auto& w : works) wait_for(w, g->timeout);
        unstage(list, on_device);
    });
}

char* sf_all_gather(void* group, void* input, void* const* outputs, size_t n) {
    return guarded("all-gather", [&]() {
        auto* g = static_cast<Group*>(group);
        std::vector<at::Tensor> inputs = staged(*g, {*static_cast<at::Tensor*>(input)});
        auto originals = tensors_of(outputs, n);
        std::vector<std::vector<at::Tensor>> outs{staged(*g, originals)};
        wait_for(g->backend->allgather(outs, inputs), g->timeout);
        unstage(originals, outs[0]);
    });
}

char* sf_barrier(void* group) {
    return guarded("barrier", [&]() {
        auto* g = static_cast<Group*>(group);
        wait_for(g->backend->barrier(), g->timeout);
    });
}

char* sf_reducer_new(void* group, void* const* params, size_t n, int64_t cap_bytes, bool overlap,
                     void** out) {
    return guarded("gradient reducer", [&]() {
        auto r = std::make_unique<Reducer>();
        r->group = static_cast<Group*>(group);
        r->cap_bytes = std::max<int64_t>(cap_bytes, 1);
        r->overlap = overlap;
        std::unordered_set<const void*> seen;
        for (size_t i = 0; i < n; ++i) {
            const auto& p = *static_cast<at::Tensor*>(params[i]);
            if (!p.requires_grad()) continue;
            // A tensor listed under two names (shared embeddings) is reduced once.
            if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;
            r->params.push_back(p);
        }
        std::vector<size_t> order;
        for (size_t i = r->params.size(); i-- > 0;) order.push_back(i);
        r->build(order);
        Reducer* self = r.get();
        for (size_t i = 0; i < r->params.size(); ++i) {
            auto acc = torch::autograd::impl::grad_accumulator(r->params[i]);
            if (!acc) throw std::runtime_error("parameter " + std::to_string(i) + " has no gradient accumulator (not a leaf?)");
            auto key = acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
                [self, i](const torch::autograd::variable_list& outputs,
                          const torch::autograd::variable_list&) {
                    self->on_ready(i);
                    return outputs;
                }));
            r->hook_keys.push_back(key);
            r->accumulators.push_back(std::move(acc));
        }
        *out = r.release();
    });
}

void sf_reducer_free(void* reducer) {
    auto* r = static_cast<Reducer*>(reducer);
    if (r == nullptr) return;
    try {
        for (size_t i = 0; i < r->accumulators.size(); ++i) {
            r->accumulators[i]->del_post_hook(r->hook_keys[i]);
        }
    } catch (...) {
    }
    delete r;
}

size_t sf_reducer_buckets(void* reducer) { return static_cast<Reducer*>(reducer)->buckets.size(); }

size_t sf_reducer_params(void* reducer) { return static_cast<Reducer*>(reducer)->params.size(); }

char* sf_reducer_prepare(void* reducer, bool sync, double predivide) {
    return guarded("gradient reducer", [&]() {
        static_cast<Reducer*>(reducer)->prepare(sync, predivide);
    });
}

char* sf_reducer_finish(void* reducer, double* waited_seconds, double* hook_seconds) {
    return guarded("gradient reducer", [&]() {
        auto* r = static_cast<Reducer*>(reducer);
        *waited_seconds = r->finish();
        *hook_seconds = r->hook_seconds;
    });
}

}  // extern "C"
