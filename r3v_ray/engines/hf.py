"""The transformers engine: batched generate with left padding, n samples per row, per-row seeded sampling."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from r3v_ray.engines.base import Engine, GenerationRequest, RequestOutput, SamplingParams, row_seed
from r3v_ray.models import chat_prompt, load_model_and_processor


class _RowSampler(LogitsProcessor):
    """Samples each row with its own torch.Generator and returns a one-hot score, which greedy search then takes.

    transformers samples a whole batch from one global RNG, so a row's text would depend on its batch
    neighbours. Sampling here, per row, makes samples a function of (seed, key, sample index) alone.
    """

    def __init__(self, generators: list[torch.Generator], params: SamplingParams):
        self.generators, self.p = generators, params

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.p.temperature
        if self.p.top_k > 0:
            kth = torch.topk(logits, min(self.p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.p.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative - sorted_logits.softmax(-1) > self.p.top_p  # keep the token that crosses top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        probs = logits.softmax(-1)
        out = torch.full_like(scores, float("-inf"))
        for i, gen in enumerate(self.generators):
            token = torch.multinomial(probs[i], 1, generator=gen)
            out[i, token] = 0.0
        return out


def collate(encoded: list[dict], pad_id: int) -> dict:
    """One batch from per-request encodings (the processor's tensors for one request each), as the processor makes
    it for those rows in one call: the per-token tensors left-padded (input_ids with `pad_id`, the others with 0),
    the image tensors (pixel patches, grids) concatenated in row order. tests/test_families.py checks it against
    the processor of every family."""
    length = max(e["input_ids"].shape[1] for e in encoded)
    batch = {}
    for key in encoded[0]:
        parts = [e[key] for e in encoded]
        if all(p.shape == e["input_ids"].shape for p, e in zip(parts, encoded)):  # one value per token
            fill = pad_id if key == "input_ids" else 0
            parts = [torch.nn.functional.pad(p, (length - p.shape[1], 0), value=fill) for p in parts]
        batch[key] = torch.cat(parts, dim=0)
    return batch


class HFEngine(Engine):
    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        max_prompt_tokens: int = 2048,
        max_batch_rows: int = 64,
        torch_threads: int | None = None,
        device: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.processor = load_model_and_processor(
            model_path, dtype, self.device, min_pixels=min_pixels, max_pixels=max_pixels
        )
        self.processor.tokenizer.padding_side = "left"
        self.max_prompt_tokens = max_prompt_tokens
        self.max_batch_rows = max_batch_rows
        self.eos_id = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = self.processor.tokenizer.pad_token_id

    def _encode(self, texts: list[str], images: list) -> dict:
        with_images = [im for im in images if im is not None]
        if with_images and len(with_images) != len(images):
            raise ValueError("a batch mixes rows with and without images; encode them separately")
        kwargs = {"images": with_images} if with_images else {}
        return self.processor(text=texts, return_tensors="pt", padding=True, **kwargs)

    def encode_request(self, request: GenerationRequest) -> dict:
        """The processor's tensors for one request (batch of one, unpadded): what its n samples all start from."""
        text = chat_prompt(self.processor, request.prompt, request.image is not None)
        return dict(self._encode([text], [request.image]))

    def prompt_tokens(self, request: GenerationRequest) -> int:
        return int(self.encode_request(request)["input_ids"].shape[1])

    @torch.inference_mode()
    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[RequestOutput]:
        outputs = [RequestOutput() for _ in requests]
        # Each request's image and prompt go through the processor once (its length decides a skip); its n sample
        # rows share those tensors, batched by `collate` as one processor call over the rows would batch them.
        rows: list[tuple[int, int, dict]] = []  # (request index, sample index, the request's encoding)
        for i, req in enumerate(requests):
            encoded = self.encode_request(req)
            length = int(encoded["input_ids"].shape[1])
            if length > self.max_prompt_tokens:
                outputs[i].error = f"prompt has {length} tokens > max_prompt_tokens {self.max_prompt_tokens}"
                continue
            rows += [(i, s, encoded) for s in range(params.n)]
        # Rows with and without an image are batched apart (as the processor needs), in chunks of max_batch_rows.
        for has_image in (True, False):
            group = [r for r in rows if (requests[r[0]].image is not None) == has_image]
            for start in range(0, len(group), self.max_batch_rows):
                self._generate_chunk(group[start : start + self.max_batch_rows], requests, params, outputs)
        return outputs

    def _generate_chunk(self, chunk, requests, params: SamplingParams, outputs: list[RequestOutput]) -> None:
        if not chunk:
            return
        enc = {k: v.to(self.device) for k, v in collate([r[2] for r in chunk], self.pad_id).items()}
        kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=False, eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        if not params.greedy:
            gens = [torch.Generator().manual_seed(row_seed(params.seed, requests[i].key, s)) for i, s, _ in chunk]
            kwargs["logits_processor"] = LogitsProcessorList([_RowSampler(gens, params)])
        # Unset the checkpoint's own sampling defaults: greedy here means greedy.
        kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1] :]
        for (i, _s, _enc), ids in zip(chunk, new):
            ids = ids.tolist()
            n = len(ids)
            if self.eos_id in ids:
                n = ids.index(self.eos_id) + 1
            outputs[i].texts.append(self.processor.tokenizer.decode(ids[:n], skip_special_tokens=True))
            outputs[i].n_tokens.append(n)
