"""Retrieval: an index of a cleaned site's passages, searched by BM25 and embeddings, for answers with sources.

    from llmlab.retrieve import Index, build_index, rag_messages, cited_passages
    build_index("runs/x/clean/documents.parquet", "runs/x/index")
    passages = Index.open("runs/x/index").search("What does json.dumps do?", k=5)

Imports only `data`, `tokenizer` and the top-level helpers, so every later stage can use it.
"""

from llmlab.retrieve.chunking import Chunk, chunk_document, chunk_text
from llmlab.retrieve.embeddings import Embedder
from llmlab.retrieve.indexing import build_index, read_documents
from llmlab.retrieve.prompt import cited_passages, rag_messages
from llmlab.retrieve.search import Index, Passage, reciprocal_rank_fusion

__all__ = ["Chunk", "Embedder", "Index", "Passage", "build_index", "chunk_document", "chunk_text", "cited_passages", "rag_messages",
           "read_documents", "reciprocal_rank_fusion"]
