#!/usr/bin/python3
"""An agent's retrieval step against cairnd, with the generated Python client.

    clients/python/generate.sh              # once: writes clients/python/gen/
    /usr/bin/python3 clients/python/agent_retrieval.py --target 127.0.0.1:7600 [--api-key KEY]

Creates a collection of text chunks with payloads, upserts a few, and asks for
the chunks nearest to a question, filtered to one language -- what a RAG agent
(LangGraph, CrewAI, AutoGen, ...) does before it prompts its model. Embeddings
here are a toy bag-of-letters so the example needs no model.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.environ.get("CAIRN_PY_GEN", os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen")))

import grpc  # noqa: E402  (python3-grpcio)
from google.protobuf import struct_pb2  # noqa: E402
from cairn.v1 import collections_pb2, collections_pb2_grpc  # noqa: E402
from cairn.v1 import points_pb2, points_pb2_grpc  # noqa: E402
from cairn.v1 import search_pb2, search_pb2_grpc, common_pb2  # noqa: E402

DIM = 26


def embed(text):
    """A toy embedding: letter frequencies, normalized."""
    v = [0.0] * DIM
    for ch in text.lower():
        if "a" <= ch <= "z":
            v[ord(ch) - ord("a")] += 1.0
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


CHUNKS = [
    ("faq-1", "en", "How do I reset my password? Use the link on the sign-in page."),
    ("faq-2", "en", "Passwords need twelve characters and one digit."),
    ("faq-3", "de", "Wie setze ich mein Passwort zurueck? Mit dem Link auf der Anmeldeseite."),
    ("doc-9", "en", "Invoices are sent on the first day of each month."),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="127.0.0.1:7600", help="cairnd gRPC address")
    ap.add_argument("--api-key", default=os.environ.get("CAIRN_API_KEY", ""), help="API key (or CAIRN_API_KEY)")
    ap.add_argument("--collection", default="agent_docs")
    args = ap.parse_args()

    channel = grpc.insecure_channel(args.target)
    md = [("authorization", "Bearer " + args.api_key)] if args.api_key else []
    collections = collections_pb2_grpc.CollectionsStub(channel)
    points = points_pb2_grpc.PointsStub(channel)
    search = search_pb2_grpc.SearchStub(channel)

    config = collections_pb2.CollectionConfig(
        dimension=DIM,
        metric=collections_pb2.METRIC_COSINE,
        payload_indexes=[collections_pb2.PayloadIndex(field="lang", type=collections_pb2.PAYLOAD_TYPE_KEYWORD)],
    )
    try:
        collections.Create(collections_pb2.CreateCollectionRequest(name=args.collection, config=config), metadata=md)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise

    batch = points_pb2.UpsertRequest(collection=args.collection)
    for chunk_id, lang, text in CHUNKS:
        payload = struct_pb2.Struct()
        payload.update({"lang": lang, "source": chunk_id.split("-")[0]})
        batch.points.add(id=common_pb2.PointId(str=chunk_id), vector=embed(text), payload=payload, text=text)
    written = points.Upsert(batch, metadata=md).points
    print(f"upserted {written} chunks")

    question = "I forgot my password, how can I reset it?"
    english = common_pb2.Filter(must=[common_pb2.Condition(key="lang", match=common_pb2.Match(
        value=struct_pb2.Value(string_value="en")))])
    params = search_pb2.SearchParams(k=2, filter=english, with_payload=True)
    hits = search.Search(search_pb2.SearchRequest(collection=args.collection, vector=embed(question), params=params),
                         metadata=md, timeout=5).hits
    for h in hits:
        print(f"{h.id.str} {h.score:.3f} [{h.payload['lang']}] {h.text}")

    # Bad input gets a clear error and changes nothing.
    try:
        points.Upsert(points_pb2.UpsertRequest(collection=args.collection, points=[
            points_pb2.Point(id=common_pb2.PointId(str="bad"), vector=[1.0, 2.0])]), metadata=md)
    except grpc.RpcError as e:
        print(f"rejected: {e.code().name}: {e.details()}")
    count = points.Count(points_pb2.CountRequest(collection=args.collection), metadata=md).count
    print(f"collection holds {count} chunks")


if __name__ == "__main__":
    main()
