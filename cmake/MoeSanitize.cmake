# MOE_SANITIZE: OFF, address (AddressSanitizer + UndefinedBehaviorSanitizer; ON is an alias) or
# thread (ThreadSanitizer). scripts/test.sh runs one pass of each.
set(MOE_SANITIZE OFF CACHE STRING "Sanitizers: OFF, address (ASan+UBSan; ON is an alias) or thread (TSan)")
set_property(CACHE MOE_SANITIZE PROPERTY STRINGS OFF address thread)
string(TOLOWER "${MOE_SANITIZE}" _moe_sanitize)
if(_moe_sanitize MATCHES "^(on|yes|true|1)$")
  set(_moe_sanitize address)
elseif(_moe_sanitize MATCHES "^(off|no|false|0|)$")
  set(_moe_sanitize off)
endif()

# Sanitized builds compile at -O1 with line tables only (they come after the build type's flags, so
# they win): UBSan's checks at -O2 with full debug info make a compile 3x slower, and reports only
# need file:line.
if(NOT _moe_sanitize STREQUAL "off")
  add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-O1> $<$<COMPILE_LANGUAGE:C,CXX>:-g1>)
endif()
if(_moe_sanitize STREQUAL "address")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
elseif(_moe_sanitize STREQUAL "thread")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
  # Debian's Abseil is not built with TSan: without this shim every absl::Mutex would look like no
  # lock at all (tests/tsan/absl_mutex_annotations.cc). A shared library linked first into every
  # target, so that its definitions interpose on libabsl's for every caller.
  add_library(moe_tsan_absl_annotations SHARED ${CMAKE_SOURCE_DIR}/tests/tsan/absl_mutex_annotations.cc)
  target_link_libraries(moe_tsan_absl_annotations PRIVATE absl::synchronization absl::time ${CMAKE_DL_LIBS})
  target_include_directories(moe_tsan_absl_annotations PRIVATE ${CMAKE_SOURCE_DIR})
  link_libraries(moe_tsan_absl_annotations)
elseif(NOT _moe_sanitize STREQUAL "off")
  message(FATAL_ERROR "MOE_SANITIZE=${MOE_SANITIZE}: want OFF, address (or ON) or thread")
endif()
set(MOE_SANITIZER "${_moe_sanitize}")
