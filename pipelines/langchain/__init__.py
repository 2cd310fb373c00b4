"""LangChain adapters over the LangChain-free RAG core: `FwPKMStore` (VectorStore), `FwPKMRetriever`
(BaseRetriever), `ChatFwPKM` (BaseChatModel). Importing this package imports langchain_core; `fwpkm_rag.pipelines`
maps the three names here lazily."""
from fwpkm_rag.pipelines.langchain.chat_models import ChatFwPKM
from fwpkm_rag.pipelines.langchain.retrievers import FwPKMRetriever
from fwpkm_rag.pipelines.langchain.vectorstores import FwPKMStore

__all__ = ["FwPKMStore", "FwPKMRetriever", "ChatFwPKM"]
