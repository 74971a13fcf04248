"""LLM filter and answer (SPEC §2): the top-K sessions with their summaries and keywords go to one
call that keeps only what is relevant to the question, in the original words; a second call answers
from that. Without an LLM the answer step is skipped (retrieval-only evaluation)."""

from __future__ import annotations

FILTER_PROMPT = """Below are memories retrieved from past conversations, each with its date, summary and keywords.
Copy only the sentences that are relevant to the question, word for word. Write nothing else.

{memories}

Question: {question}
Relevant sentences:"""

ANSWER_PROMPT = """Use the memories below to answer the question in a short phrase.

Memories:
{context}

Question: {question}
Answer:"""


def format_memories(results: list[dict]) -> str:
    return "\n\n".join(
        f"[{i + 1}] ({r.get('date', '')}) Summary: {r.get('summary', '')}\n"
        f"Keywords: {r.get('keywords', '')}\n{r['text']}"
        for i, r in enumerate(results)
    )


def filter_and_answer(llm, question: str, results: list[dict], max_tokens: int = 500, use_filter: bool = True) -> dict:
    mem = format_memories(results)
    context = (
        llm.complete(FILTER_PROMPT.format(memories=mem, question=question), max_tokens, 0.0) if use_filter else mem
    )
    answer = llm.complete(ANSWER_PROMPT.format(context=context, question=question), 64, 0.0)
    return {"context": context, "answer": answer}
