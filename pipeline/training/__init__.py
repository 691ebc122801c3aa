"""The training math of the supervised stages: identifier classification and SFT of the policy.

``identifiers`` (class weights, batching, loss and dev metrics of the ER/IP/EX identifiers) and
``sft`` (tokenised seq2seq examples, length-grouped batches, token NLL and perplexity).
"""
