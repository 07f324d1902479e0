#!/usr/bin/env python3
"""A real, independent client of the moe.v1.Generation API, using Debian's python3-grpcio.

Stubs are generated from proto/moe/v1/generate.proto with grpc_python_plugin (see README.md):

    protoc -I proto --python_out=OUT --grpc_out=OUT \
        --plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin proto/moe/v1/generate.proto

Usage:
    generate_client.py --router 127.0.0.1:50051 --prompt "Hi" [--chat] [--max-tokens 32]
        [--temperature 0] [--json] [--stubs OUT]

Streams the answer to stdout (or one JSON object per response message with --json, then a final
summary), and exits non-zero with the gRPC status on failure.
"""
import argparse
import json
import os
import sys


def load_stubs(stubs_dir):
    sys.path.insert(0, stubs_dir)
    from moe.v1 import generate_pb2, generate_pb2_grpc  # noqa: E402  (generated)
    return generate_pb2, generate_pb2_grpc


def build_request(pb, args):
    request = pb.GenerateRequest(request_id=args.request_id or "")
    if args.chat:
        request.chat.messages.add(role="user", content=args.prompt)
        if args.thinking is not None:
            request.chat.enable_thinking = args.thinking
    elif args.ids:
        request.token_ids.ids.extend(int(x) for x in args.ids.split(","))
    else:
        request.text = args.prompt
    if args.temperature is not None:
        request.sampling.temperature = args.temperature
    if args.top_p is not None:
        request.sampling.top_p = args.top_p
    if args.top_k is not None:
        request.sampling.top_k = args.top_k
    if args.seed is not None:
        request.sampling.seed = args.seed
    request.sampling.max_new_tokens = args.max_tokens
    request.sampling.ignore_eos = args.ignore_eos
    request.sampling.stop.extend(args.stop or [])
    request.logprobs = args.logprobs
    return request


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", required=True, help="HOST:PORT of the router")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--ids", help="comma-separated token ids instead of --prompt")
    parser.add_argument("--chat", action="store_true")
    parser.add_argument("--thinking", type=lambda s: s == "true", default=None)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append")
    parser.add_argument("--logprobs", type=int, default=0)
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--request-id")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--stubs", default=os.environ.get("MOE_PYTHON_STUBS", "."),
                        help="directory holding the generated moe/v1/*_pb2*.py")
    args = parser.parse_args()

    import grpc  # Debian python3-grpcio
    pb, pb_grpc = load_stubs(args.stubs)
    stub = pb_grpc.GenerationStub(grpc.insecure_channel(args.router))
    request = build_request(pb, args)
    finish = None
    try:
        for response in stub.Generate(request, timeout=args.timeout):
            if args.json:
                print(json.dumps({
                    "request_id": response.request_id,
                    "ids": [t.token_id for t in response.tokens],
                    "logprobs": [t.logprob for t in response.tokens],
                    "text": response.text,
                    "reasoning_text": response.reasoning_text,
                    "finished": response.finished,
                }), flush=True)
            else:
                sys.stdout.write(response.reasoning_text + response.text)
                sys.stdout.flush()
            if response.finished:
                finish = response
    except grpc.RpcError as error:
        print(f"\ngenerate_client: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    if finish is None:
        print("generate_client: the stream ended without a final message", file=sys.stderr)
        return 1
    summary = {
        "finish_reason": pb.FinishReason.Name(finish.finish_reason),
        "prompt_tokens": finish.usage.prompt_tokens,
        "completion_tokens": finish.usage.completion_tokens,
        "time_to_first_token_seconds": finish.timings.time_to_first_token_seconds,
    }
    if finish.matched_stop:
        summary["matched_stop"] = finish.matched_stop
    print(json.dumps(summary) if args.json else "\n" + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
