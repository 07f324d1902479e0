// GPT-2 byte-level alphabet (transformers tokenization_qwen2.bytes_to_unicode): every byte maps to
// one printable code point so that BPE can work on text. Printable bytes '!'..'~', 0xA1..0xAC and
// 0xAE..0xFF map to themselves; the other 68 bytes map to U+0100 + n in byte order.
#ifndef MOE_COMMON_TOKENIZER_BYTE_LEVEL_H_
#define MOE_COMMON_TOKENIZER_BYTE_LEVEL_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace moe::tokenizer {

class ByteLevelAlphabet {
 public:
  // The process-wide table (immutable, thread-safe).
  static const ByteLevelAlphabet& Get();

  // UTF-8 of the code point that stands for `byte`.
  std::string_view Encode(uint8_t byte) const { return encoded_[byte]; }

  // Maps a byte-level token string back to raw bytes. std::nullopt if some code point of `token`
  // is not in the alphabet (or `token` is not valid UTF-8).
  std::optional<std::string> Decode(std::string_view token) const;

 private:
  ByteLevelAlphabet();
  std::array<std::string, 256> encoded_;
  std::array<int16_t, 324> byte_of_code_point_;  // code points 0..323; -1 where unmapped
};

}  // namespace moe::tokenizer

#endif  // MOE_COMMON_TOKENIZER_BYTE_LEVEL_H_
