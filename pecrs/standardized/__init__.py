"""The standardized ReDial evaluation protocol (Kostric and Balog, "A Standardized Re-evaluation of
Conversational Recommender Systems on the ReDial Dataset", SIGIR '26).

The study builds one test collection from the raw official ReDial `test_data.jsonl`, so that
methods which preprocess ReDial differently can be compared, plus a de-duplicated ("fresh")
variant that removes the "repetition shortcut" (recommending a movie already mentioned), a naive
baseline that only repeats, and two user-centric metrics. The rules, as the study describes them
(and as implemented here):

* **Mentions.** Walk each conversation's messages in order (raw messages, never merged). A
  message mentions movie m when its text contains the token `@m` for an id m that is a key of
  that conversation's `movieMentions`; any other `@<digits>` is plain text. `@m` is matched as a
  whole number (`@12345` does not mention 1234).
* **Instances.** The recommender is the `respondentWorkerId`. An instance is a recommender
  message that mentions at least one movie and has at least one earlier message (so a
  conversation's first message is never an instance); its context is all earlier messages and
  its ground truth is the distinct movies it mentions (first-occurrence order).
* **Dedup ("fresh").** Per instance, keep only the ground-truth movies not mentioned in any
  earlier message of the conversation, by either side; drop instances left with none. The
  same rankings are scored (the context is unchanged); only the ground truth shrinks.
* **R@K** (K = 1, 10, 50): micro over ground-truth mentions, i.e. the fraction of (instance,
  movie) pairs whose movie is in the instance's top K. A multi-movie instance is ranked once and
  each of its movies counts.
* **Naive baseline.** The movies mentioned in earlier messages, most recently mentioned first
  (an earlier movie mentioned again moves to the front; within one message a later `@m` is more
  recent). It needs no model and no catalog; on the dedup variant it scores 0 by construction.
* **SR** (success rate): over dialogues with >= 1 instance, the fraction in which at some
  instance the top-1 recommendation is one of that instance's ground-truth movies and the
  seeker marked it liked (liked = 1) or seen (seen = 1) in `initiatorQuestions`.
* **RDL** (reward per dialogue length): mean over the same dialogues of (sum over the
  dialogue's instances of the top-1's reward) / (the dialogue's number of messages), where the
  reward is 1.0 for a ground-truth movie the seeker liked, 0.5 for one seen but not liked, else 0.
  `initiatorQuestions` codes for liked/seen: 1 = yes, 0 = no, 2 = did not say.

On the official test file this gives 4,198 instances with 4,975 ground-truth mentions (dedup:
3,838 / 4,472). The study's final tables use 3,617 / 3,372 rows after a further filter it does not
publish; numbers from this module are on the 4,198 / 3,838 collections.

Catalog. Ground-truth movies missing from the catalog a model ranks are kept (they count as
misses) and reported as `n_missing_from_catalog` (mentions), never dropped. Every number is a
fraction in [0, 1]; a metric with nothing to average is None.

This package needs no torch; `evaluate_model` imports the model code when called.

One module a step of the protocol:

* collection.py: the test collection: conversations, mentions, instances, the dedup variant.
* scoring.py: R@K, SR and RDL of a ranking of the instances, and the naive baseline.
* model_ranking.py: a PECRS model's ranking of the instances, as `pecrs evaluate` ranks samples.
"""
from .collection import (LIKED_REWARD, SEEN_REWARD, TEST_FILE, VARIANTS, Collection, Conversation, Instance,
                         catalog_ids, conversation_instances, find_test_file, load_collection, message_mentions,
                         parse_conversation, restrict)
from .model_ranking import context_turns, evaluate_model, instance_samples, rank_instances
from .scoring import KS, evaluate_naive, item_codes, naive_ranking, score, score_all

__all__ = ["KS", "VARIANTS", "TEST_FILE", "LIKED_REWARD", "SEEN_REWARD", "Conversation", "Instance", "Collection",
           "message_mentions", "parse_conversation", "conversation_instances", "find_test_file", "load_collection",
           "catalog_ids", "restrict", "item_codes", "score", "score_all", "naive_ranking", "evaluate_naive",
           "context_turns", "instance_samples", "rank_instances", "evaluate_model"]
