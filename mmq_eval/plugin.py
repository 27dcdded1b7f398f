"""lmms-eval entry point (group ``lmms_eval.models``): the models this package adds, and documents
on lmms-eval's requests.

lmms-eval 0.7.3 builds its requests without their document (``doc=doc`` is commented out in
``ConfigurableTask.construct_requests``), so with ``--log_samples`` every sample's ``doc_hash`` is
the hash of ``null`` (and so is every task hash built from them). Loading this entry point (which
lmms-eval does at start-up, for ``lmms-eval`` and ``mmq-eval run`` alike) calls
``attach_documents``: this one place gives each request its document without media, and each
logged sample its document's ids.
"""

from __future__ import annotations

import functools
import re

from mmq_eval.quant.registry import chat_models, lmms_models

#: Document fields that identify it (``question_id``, ``image_id``, ``imgid``, ``imageId``, ``id``).
ID_FIELD = re.compile(r"id$", re.IGNORECASE)


def model_manifests() -> list:
    """Manifests of the ``mmq_*`` models (one per wrapper of the architecture registry), resolved lazily.

    lmms-eval calls this while ``lmms_eval.models`` initialises, so lmms-eval is imported here and
    not at module level: importing this module first must not start that initialisation.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    attach_documents()
    chat = chat_models()
    return [ModelManifest(model_id=model_id, chat_class_path=path) if model_id in chat else
            ModelManifest(model_id=model_id, simple_class_path=path) for model_id, path in lmms_models().items()]


def media_free(doc: dict) -> dict:
    """`doc` without its images, audio and other binary values (what lmms-eval leaves out of logs)."""
    from lmms_eval.utils import is_multimodal_content

    return {key: value for key, value in doc.items() if not is_multimodal_content(value)}


def doc_key(doc: dict) -> dict:
    """The identifying fields of a media-free `doc` (its scalar ``*id`` fields; the whole `doc`
    when it has none)."""
    ids = {k: v for k, v in doc.items() if ID_FIELD.search(k) and isinstance(v, (str, int, float))}
    return ids or doc


def attach_documents() -> None:
    """Give lmms-eval's requests their documents and its sample logs their ids (idempotent).

    After ``Task.build_all_requests`` each request's ``doc`` is its document without media, read
    from the task's media-free copy of the split (images stay encoded in the tasks' data: nothing is
    decoded), so ``doc_hash`` is distinct per document. ``EvaluationTracker.save_results_samples``,
    which drops ``doc`` from the ``*_samples_*.jsonl`` lines, writes ``doc_key`` (``doc_key()``)
    into each line first.
    """
    from lmms_eval.api.task import Task
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker

    if getattr(Task.build_all_requests, "attaches_documents", False):
        return
    build_all_requests, save_results_samples = Task.build_all_requests, EvaluationTracker.save_results_samples

    @functools.wraps(build_all_requests)
    def build_with_documents(self, **kwargs) -> None:
        build_all_requests(self, **kwargs)
        docs, read = self.eval_docs_no_media, {}
        for request in self.instances:
            if request.doc is None:
                if request.doc_id not in read:
                    read[request.doc_id] = media_free(docs[request.doc_id])
                request.doc = read[request.doc_id]

    @functools.wraps(save_results_samples)
    def save_with_doc_keys(self, task_name: str, samples: list) -> None:
        for sample in samples:
            if isinstance(sample.get("doc"), dict):
                sample.setdefault("doc_key", doc_key(sample["doc"]))
        save_results_samples(self, task_name, samples)

    build_with_documents.attaches_documents = True
    Task.build_all_requests = build_with_documents
    EvaluationTracker.save_results_samples = save_with_doc_keys
