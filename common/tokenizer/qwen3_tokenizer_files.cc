#include "common/tokenizer/qwen3_tokenizer_files.h"

#include <zlib.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

// The files are pulled in by the assembler (.incbin) rather than a generated C array: an 11 MB
// array literal takes the compiler minutes and gigabytes; .incbin costs nothing. The paths come
// from CMake (MOE_QWEN3_TOKENIZER_GZ_PATH / MOE_QWEN3_TOKENIZER_CONFIG_PATH).
// clang-format off
#define MOE_INCBIN(sym, path)                          \
  __asm__(".section .rodata\n"                         \
          ".balign 16\n"                               \
          ".global " #sym "_begin\n"                   \
          #sym "_begin:\n"                             \
          ".incbin \"" path "\"\n"                     \
          ".global " #sym "_end\n"                     \
          #sym "_end:\n"                               \
          ".byte 0\n"                                  \
          ".previous\n")
// clang-format on

MOE_INCBIN(moe_qwen3_tokenizer_json_gz, MOE_QWEN3_TOKENIZER_GZ_PATH);
MOE_INCBIN(moe_qwen3_tokenizer_config_json, MOE_QWEN3_TOKENIZER_CONFIG_PATH);

extern "C" {
extern const unsigned char moe_qwen3_tokenizer_json_gz_begin[];
extern const unsigned char moe_qwen3_tokenizer_json_gz_end[];
extern const char moe_qwen3_tokenizer_config_json_begin[];
extern const char moe_qwen3_tokenizer_config_json_end[];
}

namespace moe::tokenizer {

absl::StatusOr<std::string> EmbeddedQwen3TokenizerJson() {
  const unsigned char* data = moe_qwen3_tokenizer_json_gz_begin;
  const size_t size = static_cast<size_t>(moe_qwen3_tokenizer_json_gz_end - data);
  if (size < 18) return absl::InternalError("embedded tokenizer.json.gz is truncated");
  // The gzip trailer's ISIZE is the uncompressed size mod 2^32; the file is far below 4 GiB.
  const uint32_t isize = uint32_t{data[size - 4]} | uint32_t{data[size - 3]} << 8 |
                         uint32_t{data[size - 2]} << 16 | uint32_t{data[size - 1]} << 24;
  std::string out(isize, '\0');

  z_stream stream{};
  if (inflateInit2(&stream, 16 + MAX_WBITS) != Z_OK) {  // 16+: expect a gzip header
    return absl::InternalError("inflateInit2 failed");
  }
  stream.next_in = const_cast<unsigned char*>(data);
  stream.avail_in = static_cast<uInt>(size);
  stream.next_out = reinterpret_cast<unsigned char*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  const int rc = inflate(&stream, Z_FINISH);
  const size_t produced = stream.total_out;
  inflateEnd(&stream);
  if (rc != Z_STREAM_END || produced != out.size()) {
    return absl::InternalError(absl::StrCat("embedded tokenizer.json.gz does not inflate (zlib rc ", rc, ", ",
                                            produced, " of ", out.size(), " bytes)"));
  }
  return out;
}

std::string_view EmbeddedQwen3TokenizerConfigJson() {
  return std::string_view(
      moe_qwen3_tokenizer_config_json_begin,
      static_cast<size_t>(moe_qwen3_tokenizer_config_json_end - moe_qwen3_tokenizer_config_json_begin));
}

}  // namespace moe::tokenizer
