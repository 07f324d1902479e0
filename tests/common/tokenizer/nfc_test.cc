#include "common/tokenizer/nfc.h"

#include <utf8proc.h>

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"

namespace moe::tokenizer {
namespace {

std::string Utf8(char32_t cp) {
  utf8proc_uint8_t buffer[4];
  const utf8proc_ssize_t n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(cp), buffer);
  return std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
}

std::string Utf8procNfc(const std::string& s) {
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          static_cast<utf8proc_ssize_t>(s.size()), &out,
                                          static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::string result = n < 0 ? "" : std::string(reinterpret_cast<const char*>(out), n);
  std::free(out);
  return result;
}

// The fast path is only sound if no inert code point can change, be reordered, or combine with
// what precedes it. Checked for every code point against utf8proc's data.
TEST(NfcTest, InertCodePointsAreStableInAnyContext) {
  for (char32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    if (IsNfcInert(cp)) {
      ASSERT_EQ(utf8proc_get_property(static_cast<utf8proc_int32_t>(cp))->combining_class, 0)
          << "U+" << std::hex << static_cast<uint32_t>(cp);
      ASSERT_EQ(Utf8procNfc(Utf8(cp)), Utf8(cp)) << "U+" << std::hex << static_cast<uint32_t>(cp);
    }
    // Every code point after the first in a canonical decomposition can be a composition second.
    utf8proc_int32_t decomposed[8];
    int last_boundclass = 0;
    const utf8proc_ssize_t n =
        utf8proc_decompose_char(static_cast<utf8proc_int32_t>(cp), decomposed, 8,
                                static_cast<utf8proc_option_t>(UTF8PROC_DECOMPOSE), &last_boundclass);
    ASSERT_GT(n, 0);
    for (utf8proc_ssize_t k = 1; k < n && k < 8; ++k) {
      ASSERT_FALSE(IsNfcInert(static_cast<char32_t>(decomposed[k])))
          << "U+" << std::hex << decomposed[k] << " composes into U+" << static_cast<uint32_t>(cp);
    }
  }
}

TEST(NfcTest, ReturnsInertTextWithoutCopying) {
  const std::string text = "plain ASCII, 中文, русский, 한국어, かな 😀";
  std::string storage;
  auto nfc = NormalizeNfc(text, &storage);
  ASSERT_TRUE(nfc.ok());
  EXPECT_EQ(nfc->data(), text.data());
  EXPECT_TRUE(storage.empty());
}

TEST(NfcTest, ComposesDecomposedText) {
  std::string storage;
  EXPECT_EQ(NormalizeNfc("Cafe\u0301", &storage).value(), "Caf\u00e9");
  EXPECT_EQ(NormalizeNfc("\u1100\u1161\u11a8", &storage).value(), "\uac01");  // jamo -> 각
  EXPECT_EQ(NormalizeNfc("\uac00\u11a8", &storage).value(), "\uac01");        // LV syllable + T jamo
  EXPECT_EQ(NormalizeNfc("\u304b\u3099", &storage).value(), "\u304c");        // か + voicing -> が
  EXPECT_EQ(NormalizeNfc("\u2126", &storage).value(), "\u03a9");              // ohm sign -> omega
}

}  // namespace
}  // namespace moe::tokenizer
