# ruff: noqa: E501 (a table of ids and reasons, one a line)
"""The expected outcome of every method run_qa.py runs (test_triton_qa.py
holds the run to it; docs/service.md, "Triton's QA tests", gives the same
counts and reasons). An id is ``suite::Class.method``."""

from __future__ import annotations

# Why a method does not pass; the same words are in docs/service.md.
REASONS = {
    "ensemble": "also calls the ensembles of the identity models (`simple_zero_*`); ensembles are not served",
    "libtorch": "also calls the LibTorch or TensorRT models of the same test; the file has no switch to leave them out",
    "status_500": "Triton answers this client mistake with a 500 and the test requires it; bnfold answers 400",
    "clock": "its verdict hangs on the clock: it asserts that a call is answered, or the server is up, within a fixed time, so the machine's speed decides it, not the server",
    "sleep": "its verdict hangs on fixed sleeps (a request assumed queued or answered after 0.5 s or 1 s, or samples taken once a second while requests run), so the machine's speed decides it, not the server",
}

# Methods that cannot pass on an ONNX-only server without ensembles: run (their
# ONNX part comes first) but not counted.
OUT_OF_SCOPE = {
    "L0_infer_reshape::InferReshapeTest.test_ff1": "libtorch",
    "L0_infer_reshape::InferReshapeTest.test_ff2": "libtorch",
    "L0_infer_reshape::InferReshapeTest.test_ff3": "libtorch",
    "L0_infer_reshape::InferReshapeTest.test_ff4": "libtorch",
    "L0_infer_reshape::InferReshapeTest.test_oo1": "libtorch",
    "L0_infer_variable::InferVariableTest.test_class_fff": "libtorch",
    "L0_infer_variable::InferVariableTest.test_class_ffi": "libtorch",
    "L0_infer_variable::InferVariableTest.test_class_fii": "libtorch",
    "L0_infer_variable::InferVariableTest.test_class_fil": "libtorch",
    "L0_infer_variable::InferVariableTest.test_class_fll": "libtorch",
    "L0_infer_variable::InferVariableTest.test_class_iif": "libtorch",
    "L0_infer_variable::InferVariableTest.test_class_iii": "libtorch",
    "L0_infer_variable::InferVariableTest.test_faw_iif": "libtorch",
    "L0_infer_variable::InferVariableTest.test_mix_ffi": "libtorch",
    "L0_infer_variable::InferVariableTest.test_mix_iif": "libtorch",
    "L0_infer_variable::InferVariableTest.test_mix_iii": "libtorch",
    "L0_infer_variable::InferVariableTest.test_raw_fff": "libtorch",
    "L0_infer_variable::InferVariableTest.test_raw_ffi": "libtorch",
    "L0_infer_variable::InferVariableTest.test_raw_fii": "libtorch",
    "L0_infer_variable::InferVariableTest.test_raw_fil": "libtorch",
    "L0_infer_variable::InferVariableTest.test_raw_fll": "libtorch",
    "L0_infer_variable::InferVariableTest.test_raw_iii": "libtorch",
    "L0_infer_variable::InferVariableTest.test_raw_ooo": "libtorch",
    "L0_infer_zero::InferZeroTest.test_bb1_0": "ensemble",
    "L0_infer_zero::InferZeroTest.test_bb1_sanity": "ensemble",
    "L0_infer_zero::InferZeroTest.test_ff1": "ensemble",
    "L0_infer_zero::InferZeroTest.test_ff1_sanity": "ensemble",
    "L0_infer_zero::InferZeroTest.test_ff3_0": "ensemble",
    "L0_infer_zero::InferZeroTest.test_ff3_1": "ensemble",
    "L0_infer_zero::InferZeroTest.test_ff3_2": "ensemble",
    "L0_infer_zero::InferZeroTest.test_ff3_3": "ensemble",
    "L0_infer_zero::InferZeroTest.test_ff3_4": "ensemble",
    "L0_infer_zero::InferZeroTest.test_ff3_sanity": "ensemble",
    "L0_infer_zero::InferZeroTest.test_hh1_0": "ensemble",
    "L0_infer_zero::InferZeroTest.test_hh1_1": "ensemble",
    "L0_infer_zero::InferZeroTest.test_hh1_2": "ensemble",
    "L0_infer_zero::InferZeroTest.test_hh1_sanity": "ensemble",
    "L0_infer_zero::InferZeroTest.test_hh3_0": "ensemble",
    "L0_infer_zero::InferZeroTest.test_hh3_1": "ensemble",
    "L0_infer_zero::InferZeroTest.test_hh3_2": "ensemble",
    "L0_infer_zero::InferZeroTest.test_hh3_3": "ensemble",
    "L0_infer_zero::InferZeroTest.test_hh3_4": "ensemble",
    "L0_infer_zero::InferZeroTest.test_hh3_sanity": "ensemble",
    "L0_grpc[restricted_protocol]::RestrictedProtocolTest.test_stream_infer": "sleep",
    "L0_http::HttpTest.test_descriptive_status_code": "sleep",
}

# Counted methods that do not pass, each with its reason.
KNOWN_FAILURES = {
    "L0_http::HttpTest.test_load_oversized_file_parameter": "status_500",
    "L0_http::HttpTest.test_negative_dimensions": "status_500",
}

PASSING = (
    "L0_grpc::GrpcTest.test_bytes_contents_many_elements_serialization",
    "L0_grpc::GrpcTest.test_duplicate_output_names_rejected",
    "L0_grpc[restricted_protocol]::RestrictedProtocolTest.test_health",
    "L0_grpc[restricted_protocol]::RestrictedProtocolTest.test_infer",
    "L0_grpc[restricted_protocol]::RestrictedProtocolTest.test_model_repository",
    "L0_grpc[restricted_protocol]::RestrictedProtocolTest.test_sanity",
    "L0_http::HttpTest.test_buffer_size_overflow",
    "L0_http::HttpTest.test_byte",
    "L0_http::HttpTest.test_byte_too_many_elements",
    "L0_http::HttpTest.test_content_encoding_chunked_manually",
    "L0_http::HttpTest.test_content_encoding_unsupported_client",
    "L0_http::HttpTest.test_duplicate_output_names",
    "L0_http::HttpTest.test_inference_header_content_length_out_of_range",
    "L0_http::HttpTest.test_json_recursion_depth_limit",
    "L0_http::HttpTest.test_loading_large_invalid_model",
    "L0_http::HttpTest.test_multi_inputs",
    "L0_http::HttpTest.test_multi_variable_dimensions",
    "L0_http::HttpTest.test_raw_binary",
    "L0_http::HttpTest.test_raw_binary_longer",
    "L0_http::HttpTest.test_repository_index_deeply_nested_json",
    "L0_http[restricted_api]::RestrictedAPITest.test_infer",
    "L0_http[restricted_api]::RestrictedAPITest.test_metadata",
    "L0_http[restricted_api]::RestrictedAPITest.test_model_repository",
    "L0_http[restricted_api]::RestrictedAPITest.test_sanity",
    "L0_http[size_limit]::InferSizeLimitTest.test_default_limit_compressed",
    "L0_http[size_limit]::InferSizeLimitTest.test_default_limit_json",
    "L0_http[size_limit]::InferSizeLimitTest.test_default_limit_raw_binary",
    "L0_http[size_limit]::InferSizeLimitTest.test_json_dtype_size_expansion_exceeds_limit_error",
    "L0_http[size_limit]::InferSizeLimitTest.test_large_string_in_json",
    "L0_http[size_limit]::InferSizeLimitTest.test_no_leak_on_invalid_inference_header_length",
    "L0_http[size_limit_2^27]::InferSizeLimitTest.test_large_input_compressed",
    "L0_http[size_limit_2^27]::InferSizeLimitTest.test_large_input_json",
    "L0_http[size_limit_2^27]::InferSizeLimitTest.test_large_input_raw_binary",
    "L0_infer::InferTest.test_class_bbb",
    "L0_infer::InferTest.test_class_fff",
    "L0_infer::InferTest.test_class_iff",
    "L0_infer::InferTest.test_class_iii",
    "L0_infer::InferTest.test_class_lll",
    "L0_infer::InferTest.test_class_sss",
    "L0_infer::InferTest.test_mix_bbb",
    "L0_infer::InferTest.test_mix_fff",
    "L0_infer::InferTest.test_mix_iff",
    "L0_infer::InferTest.test_mix_iii",
    "L0_infer::InferTest.test_mix_lll",
    "L0_infer::InferTest.test_mix_sss",
    "L0_infer::InferTest.test_raw_bbb",
    "L0_infer::InferTest.test_raw_bii",
    "L0_infer::InferTest.test_raw_fff",
    "L0_infer::InferTest.test_raw_fii",
    "L0_infer::InferTest.test_raw_fuh",
    "L0_infer::InferTest.test_raw_fuu",
    "L0_infer::InferTest.test_raw_hff",
    "L0_infer::InferTest.test_raw_hhh",
    "L0_infer::InferTest.test_raw_ibb",
    "L0_infer::InferTest.test_raw_ibs",
    "L0_infer::InferTest.test_raw_iff",
    "L0_infer::InferTest.test_raw_ihs",
    "L0_infer::InferTest.test_raw_iii",
    "L0_infer::InferTest.test_raw_iio",
    "L0_infer::InferTest.test_raw_ioi",
    "L0_infer::InferTest.test_raw_ioo",
    "L0_infer::InferTest.test_raw_lll",
    "L0_infer::InferTest.test_raw_oii",
    "L0_infer::InferTest.test_raw_oio",
    "L0_infer::InferTest.test_raw_ooi",
    "L0_infer::InferTest.test_raw_ooo",
    "L0_infer::InferTest.test_raw_sss",
    "L0_infer::InferTest.test_raw_uff",
    "L0_infer::InferTest.test_raw_uuu",
    "L0_infer::InferTest.test_raw_version_all",
    "L0_infer::InferTest.test_raw_version_latest_1",
    "L0_infer::InferTest.test_raw_version_latest_2",
    "L0_infer::InferTest.test_raw_version_specific_1",
    "L0_infer::InferTest.test_raw_version_specific_1_3",
    "L0_infer[system_shm]::InferTest.test_raw_bbb",
    "L0_infer[system_shm]::InferTest.test_raw_bii",
    "L0_infer[system_shm]::InferTest.test_raw_fff",
    "L0_infer[system_shm]::InferTest.test_raw_fii",
    "L0_infer[system_shm]::InferTest.test_raw_fuh",
    "L0_infer[system_shm]::InferTest.test_raw_fuu",
    "L0_infer[system_shm]::InferTest.test_raw_hff",
    "L0_infer[system_shm]::InferTest.test_raw_hhh",
    "L0_infer[system_shm]::InferTest.test_raw_ibb",
    "L0_infer[system_shm]::InferTest.test_raw_ibs",
    "L0_infer[system_shm]::InferTest.test_raw_iff",
    "L0_infer[system_shm]::InferTest.test_raw_ihs",
    "L0_infer[system_shm]::InferTest.test_raw_iii",
    "L0_infer[system_shm]::InferTest.test_raw_iio",
    "L0_infer[system_shm]::InferTest.test_raw_ioi",
    "L0_infer[system_shm]::InferTest.test_raw_ioo",
    "L0_infer[system_shm]::InferTest.test_raw_lll",
    "L0_infer[system_shm]::InferTest.test_raw_oii",
    "L0_infer[system_shm]::InferTest.test_raw_oio",
    "L0_infer[system_shm]::InferTest.test_raw_ooi",
    "L0_infer[system_shm]::InferTest.test_raw_ooo",
    "L0_infer[system_shm]::InferTest.test_raw_sss",
    "L0_infer[system_shm]::InferTest.test_raw_uff",
    "L0_infer[system_shm]::InferTest.test_raw_uuu",
    "L0_infer[system_shm]::InferTest.test_raw_version_all",
    "L0_infer[system_shm]::InferTest.test_raw_version_latest_1",
    "L0_infer[system_shm]::InferTest.test_raw_version_latest_2",
    "L0_infer[system_shm]::InferTest.test_raw_version_specific_1",
    "L0_infer[system_shm]::InferTest.test_raw_version_specific_1_3",
    "L0_infer_reshape::InferReshapeTest.test_ii1",
    "L0_infer_reshape::InferReshapeTest.test_ii2",
    "L0_infer_reshape::InferReshapeTest.test_ii3",
    "L0_infer_variable::InferVariableTest.test_raw_oii",
    "L0_infer_variable::InferVariableTest.test_raw_oio",
    "L0_infer_variable::InferVariableTest.test_raw_ooi",
    "L0_infer_zero::InferZeroTest.test_oo1",
    "L0_infer_zero::InferZeroTest.test_oo1_sanity",
    "L0_infer_zero::InferZeroTest.test_oo3_0",
    "L0_infer_zero::InferZeroTest.test_oo3_1",
    "L0_infer_zero::InferZeroTest.test_oo3_2",
    "L0_infer_zero::InferZeroTest.test_oo3_3",
    "L0_infer_zero::InferZeroTest.test_oo3_4",
    "L0_infer_zero::InferZeroTest.test_oo3_sanity",
    "L0_input_validation::InputShapeTest.test_input_string_shape_validation",
    "L0_input_validation[model_name]::ModelNameValidationTest.test_model_name_empty_load",
    "L0_input_validation[model_name]::ModelNameValidationTest.test_model_name_invalid_load",
    "L0_input_validation[model_name]::ModelNameValidationTest.test_model_name_invalid_unload",
    "L0_input_validation[model_name]::ModelNameValidationTest.test_model_name_valid",
    "L0_input_validation[model_name]::ModelNameValidationTest.test_model_name_whitespace_only_load",
    "L0_parameters[grpc]::ClassificationParameterTest.test_classification_output_tensor_too_large",
    "L0_parameters[grpc]::ClassificationParameterTest.test_classificattion",
    "L0_parameters[grpc]::ClassificationParameterTest.test_classificattion_unsupported_data_type",
    "L0_parameters[http]::ClassificationParameterTest.test_classification_output_tensor_too_large",
    "L0_parameters[http]::ClassificationParameterTest.test_classificattion",
    "L0_parameters[http]::ClassificationParameterTest.test_classificattion_unsupported_data_type",
    "L0_shared_memory[grpc,client_shm_off]::SharedMemoryTest.test_client_shm_disabled_by_default",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_infer_byte_size_out_of_bound",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_infer_integer_overflow",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_infer_offset_out_of_bound",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_invalid_create_shm",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_large_shm_register_offset",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_mixed_raw_shm",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_register_after_inference",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_register_invalid_shm_key",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_register_out_of_bound",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_register_reserved_names",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_reregister_after_register",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_too_big_shm",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_unregister_after_inference",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_unregister_after_register",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_unregister_before_register",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_unregisterall",
    "L0_shared_memory[grpc]::SharedMemoryTest.test_valid_create_set_register",
    "L0_shared_memory[http,client_shm_off]::SharedMemoryTest.test_client_shm_disabled_by_default",
    "L0_shared_memory[http]::SharedMemoryTest.test_infer_byte_size_out_of_bound",
    "L0_shared_memory[http]::SharedMemoryTest.test_infer_integer_overflow",
    "L0_shared_memory[http]::SharedMemoryTest.test_infer_offset_out_of_bound",
    "L0_shared_memory[http]::SharedMemoryTest.test_invalid_create_shm",
    "L0_shared_memory[http]::SharedMemoryTest.test_large_shm_register_offset",
    "L0_shared_memory[http]::SharedMemoryTest.test_mixed_raw_shm",
    "L0_shared_memory[http]::SharedMemoryTest.test_register_after_inference",
    "L0_shared_memory[http]::SharedMemoryTest.test_register_invalid_shm_key",
    "L0_shared_memory[http]::SharedMemoryTest.test_register_out_of_bound",
    "L0_shared_memory[http]::SharedMemoryTest.test_register_reserved_names",
    "L0_shared_memory[http]::SharedMemoryTest.test_reregister_after_register",
    "L0_shared_memory[http]::SharedMemoryTest.test_too_big_shm",
    "L0_shared_memory[http]::SharedMemoryTest.test_unregister_after_inference",
    "L0_shared_memory[http]::SharedMemoryTest.test_unregister_after_register",
    "L0_shared_memory[http]::SharedMemoryTest.test_unregister_before_register",
    "L0_shared_memory[http]::SharedMemoryTest.test_unregisterall",
    "L0_shared_memory[http]::SharedMemoryTest.test_valid_create_set_register",
)

MIN_PASSING = 165

# ----- Triton's logging and trace extensions (L0_logging, L0_trace), a block of its own
PASSING += (
    "L0_logging::LogEndpointTest.test_grpc_get_settings",
    "L0_logging::LogEndpointTest.test_grpc_update_settings",
    "L0_logging::LogEndpointTest.test_http_get_settings",
    "L0_logging::LogEndpointTest.test_http_update_settings",
    "L0_trace::TraceEndpointTest.test_grpc_clear_settings",
    "L0_trace::TraceEndpointTest.test_grpc_get_settings",
    "L0_trace::TraceEndpointTest.test_grpc_update_settings",
    "L0_trace::TraceEndpointTest.test_http_clear_settings",
    "L0_trace::TraceEndpointTest.test_http_get_settings",
    "L0_trace::TraceEndpointTest.test_http_update_settings",
)
MIN_PASSING += 10

# ----- small files (L0_server_status, L0_client_nobatch, L0_initializer_as_input,
# L0_scalar_io, L0_string_io, L0_http's many-chunks and aio files, L0_grpc's aio file)
REASONS.update(
    {
        "server_name": "the test requires the server to call itself `triton` in its metadata; bnfold names itself `bnfold`",
        "utf8": "the test sends BYTES elements that are not UTF-8 through the model (Triton's python string_identity echoes any bytes); ONNX strings are UTF-8 and ONNX Runtime's Python API takes and returns only text, so bnfold refuses such an element with a 400",
        "cuda_shm": "the test requires Triton's words for a CUDA shared-memory registration with invalid arguments (`failed to register shared memory region ...: invalid args`); bnfold serves no CUDA shared memory and says so (`UNIMPLEMENTED`)",
    }
)
KNOWN_FAILURES.update(
    {
        "L0_server_status::ServerMetadataTest.test_unknown_model": "server_name",
        "L0_http[aio]::TestHttpAioClient.test_get_server_metadata": "server_name",
        "L0_grpc[aio]::TestGrpcAioClient.test_get_server_metadata": "server_name",
        "L0_grpc[aio]::TestGrpcAioClient.test_register_cuda_shared_memory": "cuda_shm",
        "L0_string_io::ClientStringTest.test_unicode_bytes": "utf8",
    }
)
PASSING += (
    "L0_client_nobatch::ClientNoBatchTest.test_batch_request_for_batching_model",
    "L0_client_nobatch::ClientNoBatchTest.test_batch_request_for_nobatching_model",
    "L0_client_nobatch::ClientNoBatchTest.test_nobatch_request_for_batching_model",
    "L0_client_nobatch::ClientNoBatchTest.test_nobatch_request_for_nonbatching_model",
    "L0_grpc[aio]::TestGrpcAioClient.test_get_cuda_shared_memory_status",
    "L0_grpc[aio]::TestGrpcAioClient.test_get_inference_statistics",
    "L0_grpc[aio]::TestGrpcAioClient.test_get_model_config",
    "L0_grpc[aio]::TestGrpcAioClient.test_get_model_metadata",
    "L0_grpc[aio]::TestGrpcAioClient.test_get_system_shared_memory_status",
    "L0_grpc[aio]::TestGrpcAioClient.test_get_trace_settings",
    "L0_grpc[aio]::TestGrpcAioClient.test_is_model_ready",
    "L0_grpc[aio]::TestGrpcAioClient.test_is_server_live",
    "L0_grpc[aio]::TestGrpcAioClient.test_is_server_ready",
    "L0_grpc[aio]::TestGrpcAioClient.test_load_model",
    "L0_grpc[aio]::TestGrpcAioClient.test_register_system_shared_memory",
    "L0_grpc[aio]::TestGrpcAioClient.test_unload_model",
    "L0_grpc[aio]::TestGrpcAioClient.test_unregister_cuda_shared_memory",
    "L0_grpc[aio]::TestGrpcAioClient.test_unregister_system_shared_memory",
    "L0_grpc[aio]::TestGrpcAioClient.test_update_trace_settings",
    "L0_http[aio]::TestHttpAioClient.test_get_cuda_shared_memory_status",
    "L0_http[aio]::TestHttpAioClient.test_get_inference_statistics",
    "L0_http[aio]::TestHttpAioClient.test_get_model_config",
    "L0_http[aio]::TestHttpAioClient.test_get_model_metadata",
    "L0_http[aio]::TestHttpAioClient.test_get_system_shared_memory_status",
    "L0_http[aio]::TestHttpAioClient.test_get_trace_settings",
    "L0_http[aio]::TestHttpAioClient.test_is_model_ready",
    "L0_http[aio]::TestHttpAioClient.test_is_server_live",
    "L0_http[aio]::TestHttpAioClient.test_is_server_ready",
    "L0_http[aio]::TestHttpAioClient.test_load_model",
    "L0_http[aio]::TestHttpAioClient.test_register_cuda_shared_memory",
    "L0_http[aio]::TestHttpAioClient.test_register_system_shared_memory",
    "L0_http[aio]::TestHttpAioClient.test_unload_model",
    "L0_http[aio]::TestHttpAioClient.test_unregister_cuda_shared_memory",
    "L0_http[aio]::TestHttpAioClient.test_unregister_system_shared_memory",
    "L0_http[aio]::TestHttpAioClient.test_update_trace_settings",
    "L0_http[many_chunks]::HTTPRequestManyChunksTest.test_chunked_infer_at_max_chunks",
    "L0_http[many_chunks]::HTTPRequestManyChunksTest.test_chunked_infer_over_max_chunks_reject_with_bounded_rss_growth",
    "L0_http[many_chunks]::HTTPRequestManyChunksTest.test_chunked_infer_rejected_over_max_chunks",
    "L0_initializer_as_input::OptionalInputTest.test_with_optional",
    "L0_initializer_as_input::OptionalInputTest.test_without_optional",
    "L0_scalar_io::ScalarIOTest.test_scalar_io",
    "L0_server_status::ServerMetadataTest.test_unknown_model_version",
)

MIN_PASSING += 42

# ----- L0_lifecycle (model control, load and reload), a block of its own
REASONS.update(
    {
        "file_override": "`file:` overrides (a model sent inside the load request) are refused: bnfold serves only what is in its repository",
        "identity_words": "the test asserts the words of Triton's identity backend (`Internal: GPU instances not supported`); bnfold's reason for a KIND_GPU version on a server without CUDA is its own (`CUDA was required (device=cuda) but did not load`)",
        "lifecycle_ensemble": "past its ONNX part it loads the ensemble `simple_onnx_float32_float32_float32`; ensembles are not served",
    }
)
PASSING += (
    "L0_lifecycle[model_control_fail]::LifeCycleTest.test_model_control_fail",
    "L0_lifecycle[config_override]::LifeCycleTest.test_config_override",
    "L0_lifecycle[file_override]::LifeCycleTest.test_file_override_security",
)
KNOWN_FAILURES.update(
    {
        "L0_lifecycle[file_override]::LifeCycleTest.test_file_override": "file_override",
        "L0_lifecycle[model_reload_fail]::LifeCycleTest.test_model_reload_fail": "identity_words",
    }
)
OUT_OF_SCOPE.update(
    {
        "L0_lifecycle[model_control]::LifeCycleTest.test_model_control": "lifecycle_ensemble",
        "L0_lifecycle[dynamic_file_delete]::LifeCycleTest.test_dynamic_file_delete": "libtorch",
        # is_server_live must answer within 5 s of a fixed 3 s sleep's end
        "L0_lifecycle[availability_on_reload_3,grpc]::LifeCycleTest.test_model_availability_on_reload_3": "clock",
        "L0_lifecycle[availability_on_reload_3,http]::LifeCycleTest.test_model_availability_on_reload_3": "clock",
    }
)
MIN_PASSING += 3  # L0_lifecycle
# ----- Triton's metrics (L0_metrics), a block of its own
PASSING += (
    "L0_metrics[defaults]::MetricsConfigTest.test_cache_counters_missing",
    "L0_metrics[defaults]::MetricsConfigTest.test_cache_summaries_missing",
    "L0_metrics[defaults]::MetricsConfigTest.test_inf_counters_exist",
    "L0_metrics[defaults]::MetricsConfigTest.test_inf_histograms_missing",
    "L0_metrics[defaults]::MetricsConfigTest.test_inf_summaries_missing",
    "L0_metrics[histogram_latencies]::MetricsConfigTest.test_cache_counters_missing",
    "L0_metrics[histogram_latencies]::MetricsConfigTest.test_cache_summaries_missing",
    "L0_metrics[histogram_latencies]::MetricsConfigTest.test_inf_counters_exist",
    "L0_metrics[histogram_latencies]::MetricsConfigTest.test_inf_histograms_exist",
    "L0_metrics[histogram_latencies]::MetricsConfigTest.test_inf_summaries_missing",
    "L0_metrics[summary_latencies]::MetricsConfigTest.test_cache_counters_missing",
    "L0_metrics[summary_latencies]::MetricsConfigTest.test_cache_summaries_missing",
    "L0_metrics[summary_latencies]::MetricsConfigTest.test_inf_counters_exist",
    "L0_metrics[summary_latencies]::MetricsConfigTest.test_inf_summaries_exist",
    "L0_metrics[summary_no_counters]::MetricsConfigTest.test_cache_counters_missing",
    "L0_metrics[summary_no_counters]::MetricsConfigTest.test_cache_summaries_missing",
    "L0_metrics[summary_no_counters]::MetricsConfigTest.test_inf_counters_missing",
    "L0_metrics[summary_no_counters]::MetricsConfigTest.test_inf_summaries_exist",
    "L0_metrics[summary_quantiles]::MetricsConfigTest.test_summaries_custom_quantiles",
    "L0_metrics[cpu]::TestCpuMetrics.test_cpu_metrics_ranges",
)
MIN_PASSING += 20  # L0_metrics
# It samples the CPU families once a second (after fixed sleeps) while 2,000
# requests run, and needs more than five samples with no five equal in a
# row: how long the requests take on the machine decides it.
OUT_OF_SCOPE["L0_metrics[cpu]::TestCpuMetrics.test_cpu_metrics_during_inference"] = "sleep"
# ---- logging and tracing: L0_logging's log_format_test.py (Triton's log line
# layouts). Run by hand (run_qa.BY_HAND), not counted: each test gives the
# server it starts 5 s to open its log file and 10 s to be ready.
OUT_OF_SCOPE.update(
    dict.fromkeys(
        (
            "L0_logging[log_format,escaped]::TestLogFormat.test_format[default]",
            "L0_logging[log_format,escaped]::TestLogFormat.test_format[ISO8601]",
            "L0_logging[log_format,escaped]::TestLogFormat.test_injection[default]",
            "L0_logging[log_format,escaped]::TestLogFormat.test_injection[default_control]",
            "L0_logging[log_format,escaped]::TestLogFormat.test_injection[ISO8601]",
            "L0_logging[log_format,escaped]::TestLogFormat.test_injection[ISO8601_control]",
            "L0_logging[log_format,unescaped]::TestLogFormat.test_format[default_unescaped]",
            "L0_logging[log_format,unescaped]::TestLogFormat.test_format[ISO8601_unescaped]",
            "L0_logging[log_format,unescaped]::TestLogFormat.test_injection[default_unescaped]",
            "L0_logging[log_format,unescaped]::TestLogFormat.test_injection[default_unescaped_control]",
            "L0_logging[log_format,unescaped]::TestLogFormat.test_injection[ISO8601_unescaped]",
            "L0_logging[log_format,unescaped]::TestLogFormat.test_injection[ISO8601_unescaped_control]",
        ),
        "clock",
    )
)
# ----- Triton's dynamic batcher (L0_batcher, batcher_test.py), a block of its own.
# Run by hand (run_qa.BY_HAND), not counted: every call's answer is held to a
# time (check_response: under 3 s, 6 s or 15 s, and over 10 s where the queue
# delay must have passed).
OUT_OF_SCOPE.update(
    dict.fromkeys(
        (
            "L0_batcher::BatcherTest.test_multi_batch_not_preferred",
            "L0_batcher::BatcherTest.test_multi_batch_use_biggest_preferred",
            "L0_batcher::BatcherTest.test_multi_different_output_order",
            "L0_batcher::BatcherTest.test_multi_different_outputs",
            "L0_batcher::BatcherTest.test_multi_same_output0",
            "L0_batcher::BatcherTest.test_multi_same_output1",
            "L0_batcher::BatcherTest.test_preferred_batch_only_aligned",
            "L0_batcher::BatcherTest.test_preferred_batch_only_unaligned",
            "L0_batcher::BatcherTest.test_preferred_batch_only_use_biggest_preferred",
            "L0_batcher::BatcherTest.test_preferred_batch_only_use_no_preferred_size",
            "L0_batcher::BatcherTest.test_static_batch_gt_max_preferred",
            "L0_batcher::BatcherTest.test_static_batch_lt_any_preferred",
            "L0_batcher::BatcherTest.test_static_batch_not_preferred",
            "L0_batcher::BatcherTest.test_static_batch_preferred",
        ),
        "clock",
    )
)
# Run (they pass), not counted: which request reaches the queue first decides
# the batches, and only a time.sleep(1) (or sleep(11) against the 10 s delay)
# orders them.
OUT_OF_SCOPE.update(
    {
        f"L0_batcher::BatcherTest.{method}": "sleep"
        for method in (
            "test_multi_batch_delayed_preferred_different_shape",
            "test_multi_batch_delayed_sum_gt_max_preferred",
            "test_multi_batch_delayed_use_max_batch",
            "test_multi_batch_different_shape",
            "test_multi_batch_gt_max_preferred",
            "test_multi_batch_not_preferred_different_shape",
            "test_multi_batch_preferred_different_shape",
            "test_multi_batch_sum_gt_max_preferred",
            "test_multi_batch_use_best_preferred",
        )
    }
)
