# Library moe_test_process (tests/services/process_helper.h), shared by the services' integration
# tests. Included by each service's test folder; defined once.
if(NOT TARGET moe_test_process)
  add_library(moe_test_process ${CMAKE_CURRENT_LIST_DIR}/process_helper.cc)
  target_include_directories(moe_test_process PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(moe_test_process PUBLIC moe_proto moe_rpc gRPC::grpc++ absl::status absl::statusor
    absl::strings absl::synchronization absl::time)
  target_compile_definitions(moe_test_process PRIVATE MOE_BINARY_DIR_DEFAULT="${CMAKE_BINARY_DIR}")
endif()
