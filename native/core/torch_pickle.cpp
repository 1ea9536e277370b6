// Reading torch.save'd state_dicts without running code from the file: the zip container through
// LibTorch's PyTorchStreamReader, and a restricted pickle machine that knows only the opcodes
// torch.save emits (protocols 2–4) and only these globals: collections.OrderedDict,
// torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter and the torch.*Storage types.
// Any other global is refused. (LibTorch 1.13's own pickle_load turns OrderedDict into None, so it
// cannot read ordinary state_dicts.)
#include <caffe2/serialize/inline_container.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <variant>

#include "core/weights.h"

namespace onestage {

namespace {

struct PValue;
using PList = std::vector<std::shared_ptr<PValue>>;
using PDict = std::vector<std::pair<std::shared_ptr<PValue>, std::shared_ptr<PValue>>>;

struct PGlobal {
  std::string module, name;
};
struct PStorage {
  torch::ScalarType dtype;
  std::string key;
  int64_t numel;
};

struct PValue {
  enum class Kind { None, Bool, Int, Float, String, Tuple, List, Dict, Global, Storage, Tensor, Mark } kind = Kind::None;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  PList items;   // Tuple, List
  PDict dict;    // Dict
  PGlobal global;
  PStorage storage;
  torch::Tensor tensor;
};
using P = std::shared_ptr<PValue>;

P make(PValue::Kind k) {
  auto v = std::make_shared<PValue>();
  v->kind = k;
  return v;
}

const std::map<std::string, torch::ScalarType>& storageTypes() {
  static const std::map<std::string, torch::ScalarType> types{
      {"FloatStorage", torch::kFloat32}, {"DoubleStorage", torch::kFloat64}, {"HalfStorage", torch::kFloat16},
      {"BFloat16Storage", torch::kBFloat16}, {"LongStorage", torch::kInt64}, {"IntStorage", torch::kInt32},
      {"ShortStorage", torch::kInt16}, {"CharStorage", torch::kInt8}, {"ByteStorage", torch::kUInt8},
      {"BoolStorage", torch::kBool}};
  return types;
}

class RestrictedUnpickler {
 public:
  RestrictedUnpickler(const std::string& path, caffe2::serialize::PyTorchStreamReader& zip, const uint8_t* data, size_t size)
      : path_(path), zip_(zip), p_(data), end_(data + size) {}

  P run() {
    while (true) {
      const uint8_t op = byte();
      switch (op) {
        case 0x80: byte(); break;                                   // PROTO
        case 0x95: skip(8); break;                                  // FRAME
        case '.': return pop();                                     // STOP
        case '(': stack_.push_back(make(PValue::Kind::Mark)); break;  // MARK
        case 'N': stack_.push_back(make(PValue::Kind::None)); break;
        case 0x88: case 0x89: {                                     // NEWTRUE / NEWFALSE
          auto v = make(PValue::Kind::Bool);
          v->b = op == 0x88;
          stack_.push_back(v);
          break;
        }
        case 'J': pushInt(static_cast<int32_t>(le(4))); break;      // BININT
        case 'K': pushInt(byte()); break;                           // BININT1
        case 'M': pushInt(static_cast<int64_t>(le(2))); break;      // BININT2
        case 0x8a: {                                                // LONG1
          const size_t n = byte();
          if (n > 8) fail("integer too large");
          uint64_t u = le(n);
          int64_t v = static_cast<int64_t>(u);
          if (n > 0 && n < 8 && (u >> (8 * n - 1)) & 1) v = static_cast<int64_t>(u | (~uint64_t(0) << (8 * n)));
          pushInt(v);
          break;
        }
        case 'G': {                                                 // BINFLOAT (big-endian)
          uint64_t u = 0;
          for (int k = 0; k < 8; ++k) u = (u << 8) | byte();
          auto v = make(PValue::Kind::Float);
          std::memcpy(&v->f, &u, 8);
          stack_.push_back(v);
          break;
        }
        case 'X': pushString(le(4)); break;                         // BINUNICODE
        case 0x8c: pushString(byte()); break;                       // SHORT_BINUNICODE
        case 'c': {                                                 // GLOBAL module\nname\n
          auto g = make(PValue::Kind::Global);
          g->global.module = line();
          g->global.name = line();
          checkGlobal(g->global);
          stack_.push_back(g);
          break;
        }
        case 0x93: {                                                // STACK_GLOBAL
          auto name = pop();
          auto module = pop();
          auto g = make(PValue::Kind::Global);
          g->global = {module->s, name->s};
          checkGlobal(g->global);
          stack_.push_back(g);
          break;
        }
        case ')': stack_.push_back(make(PValue::Kind::Tuple)); break;  // EMPTY_TUPLE
        case 0x85: case 0x86: case 0x87: {                             // TUPLE1..3
          const size_t n = op - 0x84;
          auto t = make(PValue::Kind::Tuple);
          t->items.assign(stack_.end() - static_cast<long>(n), stack_.end());
          stack_.resize(stack_.size() - n);
          stack_.push_back(t);
          break;
        }
        case 't': {                                                 // TUPLE
          auto t = make(PValue::Kind::Tuple);
          t->items = popToMark();
          stack_.push_back(t);
          break;
        }
        case ']': stack_.push_back(make(PValue::Kind::List)); break;  // EMPTY_LIST
        case '}': stack_.push_back(make(PValue::Kind::Dict)); break;  // EMPTY_DICT
        case 'a': {                                                   // APPEND
          auto v = pop();
          top(PValue::Kind::List)->items.push_back(v);
          break;
        }
        case 'e': {                                                   // APPENDS
          auto items = popToMark();
          auto list = top(PValue::Kind::List);
          list->items.insert(list->items.end(), items.begin(), items.end());
          break;
        }
        case 's': {                                                   // SETITEM
          auto v = pop();
          auto k = pop();
          top(PValue::Kind::Dict)->dict.emplace_back(k, v);
          break;
        }
        case 'u': {                                                   // SETITEMS
          auto items = popToMark();
          if (items.size() % 2) fail("odd SETITEMS");
          auto d = top(PValue::Kind::Dict);
          for (size_t k = 0; k < items.size(); k += 2) d->dict.emplace_back(items[k], items[k + 1]);
          break;
        }
        case 'q': memo(byte()); break;                                // BINPUT
        case 'r': memo(le(4)); break;                                 // LONG_BINPUT
        case 0x94: memo(memo_.size()); break;                         // MEMOIZE
        case 'h': get(byte()); break;                                 // BINGET
        case 'j': get(le(4)); break;                                  // LONG_BINGET
        case 'Q': stack_.push_back(persistent(pop())); break;         // BINPERSID
        case 'R': {                                                   // REDUCE
          auto args = pop();
          auto fn = pop();
          stack_.push_back(reduce(fn, args));
          break;
        }
        case 'b': pop(); break;  // BUILD: state of an OrderedDict (_metadata) or Parameter; not needed
        default: {
          char buf[8];
          std::snprintf(buf, sizeof buf, "0x%02x", op);
          fail(std::string("unsupported pickle opcode ") + buf);
        }
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& why) const { throw std::runtime_error(path_ + " could not be read as a state_dict: " + why); }
  uint8_t byte() {
    if (p_ >= end_) fail("the pickle ends early");
    return *p_++;
  }
  void skip(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) fail("the pickle ends early");
    p_ += n;
  }
  uint64_t le(size_t n) {
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(byte()) << (8 * k);
    return v;
  }
  std::string line() {
    std::string s;
    for (uint8_t c = byte(); c != '\n'; c = byte()) s += static_cast<char>(c);
    return s;
  }
  void pushInt(int64_t v) {
    auto p = make(PValue::Kind::Int);
    p->i = v;
    stack_.push_back(p);
  }
  void pushString(uint64_t n) {
    if (static_cast<uint64_t>(end_ - p_) < n) fail("the pickle ends early");
    auto p = make(PValue::Kind::String);
    p->s.assign(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    stack_.push_back(p);
  }
  P pop() {
    if (stack_.empty()) fail("malformed pickle (stack underflow)");
    auto v = stack_.back();
    stack_.pop_back();
    return v;
  }
  P top(PValue::Kind kind) {
    if (stack_.empty() || stack_.back()->kind != kind) fail("malformed pickle (unexpected container)");
    return stack_.back();
  }
  PList popToMark() {
    PList items;
    while (true) {
      auto v = pop();
      if (v->kind == PValue::Kind::Mark) break;
      items.push_back(v);
    }
    std::reverse(items.begin(), items.end());
    return items;
  }
  void memo(uint64_t k) {
    if (stack_.empty()) fail("malformed pickle (memo of nothing)");
    memo_[k] = stack_.back();
  }
  void get(uint64_t k) {
    auto it = memo_.find(k);
    if (it == memo_.end()) fail("malformed pickle (unknown memo entry)");
    stack_.push_back(it->second);
  }

  void checkGlobal(const PGlobal& g) const {
    const bool ok = (g.module == "collections" && g.name == "OrderedDict") ||
                    (g.module == "torch._utils" && (g.name == "_rebuild_tensor_v2" || g.name == "_rebuild_parameter")) ||
                    (g.module == "torch" && storageTypes().count(g.name));
    if (!ok)
      fail("it references " + g.module + "." + g.name +
           ", which a state_dict does not need (onestage never runs code from a weights file; if it holds a whole "
           "pickled model, save model.state_dict() in Python instead)");
  }

  P persistent(const P& pid) {
    // ('storage', torch.XStorage, key, location, numel)
    if (pid->kind != PValue::Kind::Tuple || pid->items.size() < 5 || pid->items[0]->s != "storage" ||
        pid->items[1]->kind != PValue::Kind::Global)
      fail("unsupported persistent id");
    auto s = make(PValue::Kind::Storage);
    s->storage.dtype = storageTypes().at(pid->items[1]->global.name);
    s->storage.key = pid->items[2]->s;
    s->storage.numel = pid->items[4]->i;
    return s;
  }

  torch::Tensor loadStorage(const PStorage& s) {
    auto it = storages_.find(s.key);
    if (it != storages_.end()) return it->second;
    const std::string record = "data/" + s.key;
    if (!zip_.hasRecord(record)) fail("storage " + s.key + " is missing from the archive");
    auto [ptr, size] = zip_.getRecord(record);
    const size_t need = static_cast<size_t>(s.numel) * c10::elementSize(s.dtype);
    if (size < need) fail("storage " + s.key + " holds " + std::to_string(size) + " bytes, fewer than its " + std::to_string(need));
    auto t = torch::empty({s.numel}, torch::TensorOptions().dtype(s.dtype));
    if (need > 0) std::memcpy(t.data_ptr(), ptr.get(), need);
    storages_.emplace(s.key, t);
    return t;
  }

  static std::vector<int64_t> ints(const P& tuple) {
    std::vector<int64_t> v;
    for (const auto& e : tuple->items) v.push_back(e->i);
    return v;
  }

  P reduce(const P& fn, const P& args) {
    if (fn->kind != PValue::Kind::Global || args->kind != PValue::Kind::Tuple) fail("malformed pickle (bad REDUCE)");
    const auto& g = fn->global;
    if (g.name == "OrderedDict") {
      auto d = make(PValue::Kind::Dict);
      if (!args->items.empty() && args->items[0]->kind == PValue::Kind::List)
        for (const auto& pair : args->items[0]->items)
          if (pair->items.size() == 2) d->dict.emplace_back(pair->items[0], pair->items[1]);
      return d;
    }
    if (g.name == "_rebuild_tensor_v2") {
      if (args->items.size() < 4 || args->items[0]->kind != PValue::Kind::Storage) fail("malformed tensor record");
      const auto storage = loadStorage(args->items[0]->storage);
      const int64_t offset = args->items[1]->i;
      const auto size = ints(args->items[2]);
      const auto stride = ints(args->items[3]);
      int64_t last = offset;
      for (size_t d = 0; d < size.size(); ++d) last += size[d] > 0 ? (size[d] - 1) * stride[d] : 0;
      bool empty = false;
      for (auto n : size) empty = empty || n == 0;
      if (!empty && (offset < 0 || last >= storage.numel())) fail("a tensor reaches past its storage");
      auto t = make(PValue::Kind::Tensor);
      t->tensor = empty ? torch::empty(size, storage.options()) : storage.as_strided(size, stride, offset).clone();
      return t;
    }
    if (g.name == "_rebuild_parameter") {
      if (args->items.empty() || args->items[0]->kind != PValue::Kind::Tensor) fail("malformed parameter record");
      return args->items[0];
    }
    fail("cannot call " + g.module + "." + g.name);
  }

  std::string path_;
  caffe2::serialize::PyTorchStreamReader& zip_;
  const uint8_t* p_;
  const uint8_t* end_;
  std::vector<P> stack_;
  std::map<uint64_t, P> memo_;
  std::map<std::string, torch::Tensor> storages_;
};

NamedTensors tensorsOf(const P& value, const std::string& path) {
  if (value->kind != PValue::Kind::Dict)
    throw std::runtime_error(path + " does not hold a dict of tensors (a state_dict)");
  for (const char* wrapper : {"state_dict", "model"})
    for (const auto& [k, v] : value->dict)
      if (k->kind == PValue::Kind::String && k->s == wrapper && v->kind == PValue::Kind::Dict) return tensorsOf(v, path);
  NamedTensors out;
  for (const auto& [k, v] : value->dict) {
    if (k->kind != PValue::Kind::String) throw std::runtime_error(path + ": a state_dict key is not a string");
    if (v->kind != PValue::Kind::Tensor)
      throw std::runtime_error(path + ": entry '" + k->s + "' is not a tensor (expected a state_dict)");
    out.emplace_back(k->s, v->tensor);
  }
  return out;
}

}  // namespace

NamedTensors readTorchStateDict(const std::string& path) {
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
    char magic[2] = {0, 0};
    probe.read(magic, 2);
    if (magic[0] != 'P' || magic[1] != 'K')
      throw std::runtime_error(path + " is not a zip-format torch.save file (save it with PyTorch ≥ 1.6's default format)");
  }
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> zip;
  try {
    zip = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    throw std::runtime_error(path + " is not a readable torch.save archive: " + msg.substr(0, msg.find('\n')));
  }
  if (!zip->hasRecord("data.pkl")) throw std::runtime_error(path + " has no data.pkl: not a torch.save file");
  auto [ptr, size] = zip->getRecord("data.pkl");
  RestrictedUnpickler unpickler(path, *zip, static_cast<const uint8_t*>(ptr.get()), size);
  return tensorsOf(unpickler.run(), path);
}

}  // namespace onestage
