"""LangChain adapters over the LangChain-free RAG core: `FwPKMStore` (VectorStore), `RayFwPKMStore` (the same over Ray actors), `FwPKMRetriever`
(BaseRetriever), `ChatFwPKM` (BaseChatModel). Importing this package imports langchain_core; `fwpkm_rag.pipelines`
maps the three names here lazily."""
from fwpkm_rag.pipelines.langchain.chat_models import ChatFwPKM
from fwpkm_rag.pipelines.langchain.ray_store import RayFwPKMStore
from fwpkm_rag.pipelines.langchain.retrievers import FwPKMRetriever
from fwpkm_rag.pipelines.langchain.vectorstores import FwPKMStore

__all__ = ["FwPKMStore", "RayFwPKMStore", "FwPKMRetriever", "ChatFwPKM"]
