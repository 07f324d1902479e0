#include "common/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"

namespace moe::model {
namespace {

using nlohmann::json;

absl::Status Invalid(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

// Reads a JSON array of non-negative integers; false if it is anything else.
bool ReadUintArray(const json& v, std::vector<uint64_t>* out) {
  if (!v.is_array()) return false;
  for (const json& e : v) {
    if (!e.is_number_unsigned()) return false;
    out->push_back(e.get<uint64_t>());
  }
  return true;
}

struct Entry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

// Parses and validates the JSON header against a data buffer of `buffer_size` bytes.
absl::StatusOr<std::vector<Entry>> ParseHeader(const std::string& path, std::string_view header,
                                               uint64_t buffer_size,
                                               std::map<std::string, std::string>* metadata) {
  json j = json::parse(header.begin(), header.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Invalid(path, "header is not valid JSON");
  if (!j.is_object()) return Invalid(path, "header is not a JSON object");
  std::vector<Entry> entries;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return Invalid(path, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return Invalid(path, absl::StrCat("__metadata__ value for '", m.key(), "' is not a string"));
        }
        (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor '", name, "': ");
    if (!v.is_object()) return Invalid(path, absl::StrCat(where, "entry is not an object"));
    auto dtype_it = v.find("dtype");
    if (dtype_it == v.end() || !dtype_it->is_string()) {
      return Invalid(path, absl::StrCat(where, "missing or non-string dtype"));
    }
    std::optional<DType> dtype = ParseSafetensorsDType(dtype_it->get<std::string>());
    if (!dtype.has_value()) {
      return Invalid(path, absl::StrCat(where, "unknown dtype '", dtype_it->get<std::string>(), "'"));
    }
    std::vector<uint64_t> shape_u;
    auto shape_it = v.find("shape");
    if (shape_it == v.end() || !ReadUintArray(*shape_it, &shape_u)) {
      return Invalid(path, absl::StrCat(where, "shape must be a list of non-negative integers"));
    }
    std::vector<uint64_t> offsets;
    auto off_it = v.find("data_offsets");
    if (off_it == v.end() || !ReadUintArray(*off_it, &offsets) || offsets.size() != 2) {
      return Invalid(path, absl::StrCat(where, "data_offsets must be [begin, end]"));
    }
    // Element count and byte size with overflow checks: a hostile header must not wrap around.
    uint64_t bytes = DTypeSize(*dtype);
    Entry e{name, *dtype, {}, offsets[0], offsets[1]};
    for (uint64_t d : shape_u) {
      if (d > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(bytes, d, &bytes)) {
        return Invalid(path, absl::StrCat(where, "shape is too large"));
      }
      e.shape.push_back(static_cast<int64_t>(d));
    }
    if (e.begin > e.end) {
      return Invalid(path, absl::StrCat(where, "data_offsets [", e.begin, ", ", e.end, "] has begin > end"));
    }
    if (e.end - e.begin != bytes) {
      return Invalid(
          path, absl::StrCat(where, "shape ", ShapeString(e.shape), " of ", std::string(DTypeName(*dtype)),
                             " needs ", bytes, " bytes but data_offsets span ", e.end - e.begin));
    }
    if (e.end > buffer_size) {
      return Invalid(path, absl::StrCat(where, "data_offsets end ", e.end, " is past the data buffer (",
                                        buffer_size, " bytes)"));
    }
    entries.push_back(std::move(e));
  }
  // The tensors must tile the buffer exactly: no overlap, no gap, nothing trailing.
  std::vector<const Entry*> sorted;
  for (const Entry& e : entries) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t expected = 0;
  const Entry* previous = nullptr;
  for (const Entry* e : sorted) {
    if (e->begin < expected) {
      return Invalid(path, absl::StrCat("tensor '", e->name, "' overlaps tensor '", previous->name, "'"));
    }
    if (e->begin > expected) {
      return Invalid(path,
                     absl::StrCat("data buffer has a gap of ", e->begin - expected, " bytes before tensor '",
                                  e->name, "' (offsets do not tile the buffer)"));
    }
    expected = e->end;
    previous = e;
  }
  if (expected != buffer_size) {
    return Invalid(path, absl::StrCat("data buffer has ", buffer_size - expected,
                                      " trailing bytes not covered by any tensor"));
  }
  return entries;
}

absl::Status ErrnoStatus(const std::string& path, absl::string_view op) {
  const int err = errno;
  std::string msg = absl::StrCat(path, ": ", op, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(path, "open");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    absl::Status s = ErrnoStatus(path, "stat");
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Invalid(path, "not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return Invalid(path, absl::StrCat("file is ", size, " bytes, shorter than the 8-byte header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) {
    absl::Status s = ErrnoStatus(path, "mmap");
    ::close(fd);
    return s;
  }
  ::close(fd);  // the mapping keeps the file alive
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  file->map_ = map;
  file->map_size_ = size;

  const auto* bytes = static_cast<const uint8_t*>(map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little-endian
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return Invalid(path, absl::StrCat("header length ", header_len, " exceeds the 100 MB limit"));
  }
  if (header_len > size - 8) {
    return Invalid(path, absl::StrCat("header length ", header_len, " runs past the end of the file (", size,
                                      " bytes)"));
  }
  const std::string_view header(reinterpret_cast<const char*>(bytes + 8), header_len);
  const uint64_t data_start = 8 + header_len;
  ASSIGN_OR_RETURN(std::vector<Entry> entries,
                   ParseHeader(path, header, size - data_start, &file->metadata_));
  for (Entry& e : entries) {
    TensorView view;
    view.dtype = e.dtype;
    view.shape = std::move(e.shape);
    view.data = bytes + data_start + e.begin;
    file->tensors_.emplace(std::move(e.name), std::move(view));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) {
    json m = json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  uint64_t max_bytes = 0;
  std::set<std::string> names;
  for (const TensorToWrite& t : tensors) {
    if (t.name == "__metadata__" || !names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": duplicate or reserved tensor name '", t.name, "'"));
    }
    if (DTypeSize(t.dtype) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", t.name, "' has no dtype"));
    }
    uint64_t bytes = DTypeSize(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0)
        return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", t.name, "' has a negative dim"));
      bytes *= static_cast<uint64_t>(d);
    }
    header[t.name] = json{{"dtype", std::string(DTypeName(t.dtype))},
                          {"shape", t.shape},
                          {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    max_bytes = std::max(max_bytes, bytes);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned

  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return ErrnoStatus(path, "open for writing");
  auto fail = [&](absl::string_view op) {
    absl::Status s = ErrnoStatus(path, op);
    std::fclose(f);
    std::remove(path.c_str());
    return s;
  };
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  if (std::fwrite(len, 1, 8, f) != 8 || std::fwrite(text.data(), 1, text.size(), f) != text.size()) {
    return fail("write header");
  }
  std::unique_ptr<uint8_t[]> scratch(new uint8_t[std::max<uint64_t>(max_bytes, 1)]);
  for (const TensorToWrite& t : tensors) {
    const size_t bytes = static_cast<size_t>(TensorView{t.dtype, t.shape, nullptr}.NumBytes());
    if (bytes == 0) continue;
    t.fill(scratch.get());
    if (std::fwrite(scratch.get(), 1, bytes, f) != bytes) return fail("write tensor data");
  }
  if (std::fclose(f) != 0) {
    absl::Status s = ErrnoStatus(path, "close");
    std::remove(path.c_str());
    return s;
  }
  return absl::OkStatus();
}

}  // namespace moe::model
