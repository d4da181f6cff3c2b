"""Prompt texts of the published methods (SPEC §1.3, §1.6, §2.1), verbatim, in one place."""

JUDGE_INSTRUCTION = (
    "I will provide you with a query and a candidate. Please evaluate whether the candidate meets the "
    "requirements of the query. If it does, respond with 'Yes'; if it doesn't, respond with 'No'."
)
JUDGE_QUERY_LABEL = "Query: "
JUDGE_CANDIDATE_LABEL = ", Candidate: "
JUDGE_END = "."

LISTWISE_INSTRUCTION = (
    "I will provide you with a query followed by multiple candidates in the format: (1) cand1 (2) cand2, "
    "etc. Each candidate is independent of the others. Evaluate each candidate against the query, and "
    "respond with the number corresponding to the candidate that best meets the requirements of the query."
)

EMBED_SUMMARY_PROMPT = "Summarize the above content in one word:"
EMB_TOKEN = "<emb>"
POOLINGS = ("last", "emb")  # an embedding: the last token's hidden state, or the one at EMB_TOKEN

YES, NO = "Yes", "No"
