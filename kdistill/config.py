"""Typed, validated pipeline parameters (params.yaml).

Every stage loads the whole file through `load_params` before doing any work, so a typo or an impossible
combination is refused in seconds with the key's full path, never after an hour of training.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from kdistill.recipes import RECIPES, baseline
from kdistill.schema import OptimParams, ParamsError, Section
from kdistill.train.precision import PrecisionSpec

_Section = Section  # the stage sections below


class BaseParams(_Section):
    seed: int = 42
    # a GLUE preset (sst2, cola, mrpc, rte, stsb: read from data_dir), or the name of your own task (`data` section):
    # registered students are <registry_prefix><task>-<recipe>
    task: str = Field("sst2", pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)
    data_dir: str = "data/glue"  # GLUE tsv root, or a `datasets` name such as "glue/sst2" (needs network)
    teacher: str = "offline:all-MiniLM-L6-v2"  # offline package, a local directory or a hub id
    # the students to distil, one per recipe (kdistill/recipes), each with its general, task and control stages
    recipes: list[str] = Field(default_factory=lambda: list(RECIPES), min_length=1)
    # pickle weights (pytorch_model.bin) can run code when loaded: a teacher must ship safetensors unless this is true
    allow_pickle_weights: bool = False
    max_seq_len: int = Field(64, ge=8, le=512)
    max_train_examples: int | None = Field(None, ge=1)  # subsample the task's train split (None: all of it)
    eval_split: Literal["dev", "train", "test"] = "dev"
    # rows held out at the end of the (shuffled) train split, never trained on: training stages pick their best
    # checkpoint on them, and the eval split is scored once, on the state picked (0: no selection, the last state)
    validation_rows: int = Field(1000, ge=0)
    # which evaluated state a stage keeps (kdistill.train.selection): the last one unless an earlier one leads on
    # the validation rows by more than two standard errors of the paired difference | the best | the last
    checkpoint_rule: Literal["last_unless_significant", "best", "last"] = "last_unless_significant"
    # auto: bf16 where the hardware runs it natively (AVX512-BF16/AMX CPUs, CUDA with bf16), fp16 + loss scaling on
    # other CUDA devices, fp32 elsewhere. A stage's own `precision` overrides it.
    precision: PrecisionSpec = "auto"
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"  # auto: this process's CPUs, split among stages run together
    max_parallel: Annotated[int, Field(ge=1)] | Literal["auto"] = 2  # stages the flow runs side by side (auto: one per 2 CPUs)
    # data-parallel processes per training stage (torchrun; `make pipeline NPROC=2` overrides): same global batches,
    # gradients summed across processes. auto: one per CUDA device, else 1
    nproc: Annotated[int, Field(ge=1)] | Literal["auto"] = 1

    @field_validator("recipes")
    @classmethod
    def _recipes_known(cls, names: list[str]) -> list[str]:
        return _known_recipes(names)


GLUE_PRESETS = ("sst2", "cola", "mrpc", "rte", "stsb")


class DataParams(_Section):
    """Your own labelled text (kdistill/data/tables.py); `train: null` uses the GLUE preset named by base.task."""

    train: str | None = None  # a CSV/TSV, JSON/JSON Lines or Parquet file, or a datasets.save_to_disk directory
    dev: str | None = None  # null: a seeded `dev_fraction` of train is held out as dev
    test: str | None = None
    # auto: by suffix (.conll/.bio/.iob: the CoNLL column format, for token_classification)
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "arrow", "conll"] = "auto"
    # column names; token_classification: the lists of words and of tags (then they default to tokens and tags)
    text: str = Field("text", min_length=1)
    text_pair: str | None = None
    label: str = Field("label", min_length=1)
    # token_classification: one row = words and a tag per word (IOB2, IOB1 or BIOES: detected), kdistill/data/tagged.py
    # extractive_qa: one row = a question, its context and answers (SQuAD JSON, or context/question/answers columns;
    # kdistill/data/answers.py); a context longer than base.max_seq_len is read in windows doc_stride tokens apart
    kind: Literal["single_label", "multi_label", "regression", "token_classification", "extractive_qa"] = "single_label"
    tag_column: int = -1  # CoNLL files: the column (0-based, -1 the last) that holds the tag; the word is the first
    # extractive_qa: tokens shared by consecutive windows of one context (null: a quarter of base.max_seq_len)
    doc_stride: int | None = Field(None, ge=1)
    max_answer_len: int = Field(30, ge=1)  # extractive_qa: the longest answer (tokens) a prediction may be
    labels: list[str] | None = Field(None, min_length=2)  # names in id order (null: train's own, sorted)
    # primary metric (null: accuracy, micro_f1, pearson or entity_f1 by kind)
    metric: str | None = None
    dev_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 0  # fixed apart from base.seed, so every seed of a study scores on the same dev rows

    _labels_once = field_validator("labels")(lambda v: v if v is None else _distinct(v))

    @model_validator(mode="before")
    @classmethod
    def _token_columns(cls, raw):
        """A token-classification table's columns are the words and tags lists: tokens and tags unless named
        otherwise (the sentence-level names text and label, params.yaml's defaults, mean the same here)."""
        if isinstance(raw, dict) and raw.get("kind") == "token_classification":
            raw = {**raw, "text": "tokens" if raw.get("text", "text") == "text" else raw["text"],
                   "label": "tags" if raw.get("label", "label") == "label" else raw["label"]}
        return raw


class PrepareParams(_Section):
    corpus: str = "data/corpus/enwiki_sample.txt"
    corpus_seq_len: int = Field(128, ge=8, le=512)
    max_documents: int | None = Field(None, ge=1)
    num_proc: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"  # packing processes (datasets.map); auto: the stage's CPUs


class AugmentParams(_Section):
    method: Literal["wordnet", "tinybert", "none"] = "wordnet"  # keep in step with AugmentMethod below
    copies: int = Field(2, ge=0, le=100)  # augmented copies per training example (N_a)
    aug_p: float = Field(0.3, gt=0.0, le=1.0)  # probability that a word is replaced
    max_examples: int | None = Field(None, ge=1)  # augment only the first N training examples
    batch_size: int = Field(256, ge=1)
    top_k: int = Field(15, ge=1)  # tinybert method: masked-LM candidates per word (K)
    glove_neighbours: int = Field(15, ge=1)


class TeacherFinetuneParams(_Section):
    # auto: a teacher whose classification head already names the data's labels (in their order) is scored and used
    # as it is, with zero training steps; any other is fine-tuned. train: always fine-tune. use: never (refused when
    # the labels differ or it scores near chance on the validation rows)
    mode: Literal["auto", "train", "use"] = "auto"
    max_train_examples: int | None = Field(None, ge=1)  # the teacher's own subset of the train split (None: all)
    optim: OptimParams = OptimParams(lr=5e-5, epochs=2.0)


class TeacherMlmParams(_Section):
    """The teacher with a masked-LM head, for the recipes whose objectives need its MLM predictions (DistilBERT's
    and MobileBERT's pre-training distillation). A teacher that ships without a head gets one fitted on its frozen
    encoder; these settings govern that fit."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    heldout_sequences: int = Field(200, ge=1)
    precision: PrecisionSpec | None = None  # None: base.precision


# Each recipe module owns its sections (GeneralParams, TaskParams); the params file has one per recipe in RECIPES.
GeneralDistillParams = create_model(
    "GeneralDistillParams", __base__=Section, **{n: (m.GeneralParams, m.GeneralParams()) for n, m in RECIPES.items()})
TaskDistillParams = create_model(
    "TaskDistillParams", __base__=Section, **{n: (m.TaskParams, m.TaskParams()) for n, m in RECIPES.items()},
    baseline=(baseline.TaskParams, baseline.TASK_DEFAULTS),
    # a second control for the recipes named (kdistill/recipes/baseline.py): the general stage's starting student,
    # fine-tuned on gold labels with the baseline budget; its stages exist only in profiles that set it
    teacher_init_controls=(list[str], []))


class EvaluateParams(_Section):
    batch_sizes: list[int] = [1, 32]
    seq_lens: list[int] = [64, 128]
    warmup: int = Field(3, ge=0)
    repeats: int = Field(20, ge=1)
    precision: PrecisionSpec | None = None  # dev scoring and latency (None: base.precision)
    # intra-op threads while timed (auto: the stage's CPUs); 1, as export.threads, times what the server gives each
    # request, and report.md's speedups then measure the setting deploy.md measures
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] = 1


class ExportParams(_Section):
    """ONNX fp32 + dynamic int8 export of the teacher and each student, parity-checked, timed, registered."""

    opset: int = Field(18, ge=17, le=23)
    fuse: bool = True  # fused attention / GELU / LayerNorm kernels in the fp32 graph (and so in int8); false: as exported
    parity_atol: float = Field(1.0e-3, gt=0)  # max |logit diff| ONNX fp32 vs PyTorch fp32 over the whole dev set
    int8_per_channel: bool = True
    int8_reduce_range: bool = False  # 7-bit weights: for CPUs without VNNI if int8 accuracy suffers from saturation
    int8_max_drop: float = Field(0.01, ge=0)  # int8 dev-metric drop (absolute) beyond which int8 is not registered
    int8_min_gain: float = Field(0.05, ge=0, lt=1)  # int8 is registered only when its p50 is this share below fp32's
    batch_sizes: list[Annotated[int, Field(ge=1)]] = [1, 32]
    seq_lens: list[Annotated[int, Field(ge=1)]] = [64, 128]
    warmup: int = Field(3, ge=0)
    repeats: int = Field(50, ge=5)  # interleaved rounds per shape (each round runs every variant once)
    max_seconds_per_shape: float = Field(60.0, gt=0)  # rounds stop earlier once a shape has taken this long
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] = 1  # intra-op threads of every variant while timed
    serve_threads: int = Field(1, ge=1)  # intra-op threads of the served model (one request per core)


class TrackingParams(_Section):
    mlflow_uri: str = "sqlite:///mlflow.db"  # relative sqlite paths resolve against the project root
    experiment_prefix: str = "kdistill"
    # registered names are <registry_prefix><task>-<recipe>: a test profile must not add versions to the real models
    registry_prefix: str = Field("", pattern=r"^[A-Za-z0-9_.-]*$")
    register_models: bool = True


class ScheduleParams(_Section):
    cron: str = "0 3 * * *"
    deployment: str = "nightly"
    # the Prefect work pool (process type) the deployment targets: `make worker` on any machine serves it
    work_pool: str = Field("kdistill", min_length=1)
    # a second pool for the training stages (e.g. one whose workers have GPUs): each runs as a flow run of the
    # deployment kdistill-stage/<pool> on a worker of that pool (`make worker POOL=<pool>`), on machines sharing the
    # project directory; null: every stage runs where the flow runs
    training_pool: str | None = Field(None, min_length=1)


AugmentMethod = Literal["wordnet", "tinybert", "none"]


def _distinct(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"each value at most once: {values}")
    return values


def _known_recipes(names: list[str]) -> list[str]:
    known = list(RECIPES)
    if set(names) - set(known):
        raise ValueError(f"unknown recipe(s) {sorted(set(names) - set(known))}; known: {', '.join(known)}")
    return _distinct(names)


class AblationParams(_Section):
    """`make ablation`: task distillation of `recipes` again with each augmentation `methods` (other keys as set)."""

    methods: list[AugmentMethod] = Field(["none", "wordnet", "tinybert"], min_length=1)
    recipes: list[str] = Field(["tinybert", "distilbert"], min_length=1)

    _methods_once = field_validator("methods")(_distinct)
    _recipes_known = field_validator("recipes")(_known_recipes)


class SeedsVariant(_Section):
    """A lever measured over the seeds study's seeds: `change` (params keys, as in params.yaml) applied to the
    pipeline's params for `recipes`. A change under general_distill gets general students of its own (one general
    stage per recipe, at the pipeline's seed, shared by the variant's seeds, as the pipeline's are by the seeds)."""

    recipes: list[str] = Field(min_length=1)
    change: dict[str, Any] = Field(min_length=1)

    _recipes_known = field_validator("recipes")(_known_recipes)

    @field_validator("change")
    @classmethod
    def _not_the_seed(cls, change: dict) -> dict:
        if "seed" in (change.get("base") or {}):
            raise ValueError("base.seed is what the study varies; leave it out of a variant's change")
        return change


class SeedsParams(_Section):
    """`make seeds`: augmentation, task distillation and (with baselines) the no-teacher controls once per seed;
    each of `variants` over the same seeds, compared with the pipeline's params seed by seed."""

    seeds: list[int] = Field([42, 43, 44], min_length=2)
    recipes: list[str] = Field(default_factory=lambda: list(RECIPES), min_length=1)
    baselines: bool = True
    variants: dict[str, SeedsVariant] = {}

    _seeds_once = field_validator("seeds")(_distinct)
    _recipes_known = field_validator("recipes")(_known_recipes)

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, variants: dict) -> dict:
        for name in variants:
            if not re.fullmatch(r"[a-z][a-z0-9_-]*", name) or re.fullmatch(r"seed\d+", name):
                raise ValueError(f"variant name {name!r}: lower-case letters, digits, '-' and '_', starting with a "
                                 "letter, and not seed<N> (it names the variant's folders and stages)")
        return variants


class StudiesParams(_Section):
    # both reuse the pipeline's prepared data, teachers and general students (stages of `make pipeline` they run first)
    ablation: AblationParams = AblationParams()
    seeds: SeedsParams = SeedsParams()


class Params(_Section):
    base: BaseParams = BaseParams()
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    augment: AugmentParams = AugmentParams()
    teacher_mlm: TeacherMlmParams = TeacherMlmParams()
    teacher_finetune: TeacherFinetuneParams = TeacherFinetuneParams()
    general_distill: GeneralDistillParams = GeneralDistillParams()
    task_distill: TaskDistillParams = TaskDistillParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    tracking: TrackingParams = TrackingParams()
    schedule: ScheduleParams = ScheduleParams()
    studies: StudiesParams = StudiesParams()


    @model_validator(mode="after")
    def _task_source(self):
        if self.data.train is None and self.base.task not in GLUE_PRESETS:
            raise ValueError(f"base.task: {self.base.task!r} is not a GLUE preset ({', '.join(GLUE_PRESETS)}) and "
                             "data.train names no file: set data.train to your labelled table")
        if self.data.train is None and self.data.dev is not None:
            raise ValueError("data.dev: set, but data.train is not: name both (or neither, for a GLUE preset)")
        if self.data.train is not None and self.base.eval_split == "test" and self.data.test is None:
            raise ValueError("base.eval_split: test needs a test file (data.test)")
        return self

    @model_validator(mode="after")
    def _token_kind_stages(self):
        if self.data.kind == "token_classification" and self.data.text_pair is not None:
            raise ValueError("data.text_pair: a token-classification row is one list of words; leave it out")
        if self.data.kind == "token_classification" and self.augment.method != "none":
            raise ValueError(f"augment.method: {self.augment.method} replaces words, which would leave the tags on "
                             "other words; token_classification takes augment.method: none")
        if self.data.kind == "extractive_qa":
            if self.augment.method != "none":
                raise ValueError(f"augment.method: {self.augment.method} replaces words, which would move the answers "
                                 "away from their answer_start; extractive_qa takes augment.method: none")
            if self.data.text_pair is not None:
                raise ValueError("data.text_pair: a QA row's two texts are its question and context; leave it out")
            if self.data.doc_stride is not None and self.data.doc_stride >= self.base.max_seq_len // 2:
                raise ValueError(f"data.doc_stride: {self.data.doc_stride} tokens of overlap leave windows of "
                                 f"base.max_seq_len {self.base.max_seq_len} little new context each; use less than "
                                 f"{self.base.max_seq_len // 2}")
            if self.data.format not in ("auto", "json", "jsonl", "parquet"):
                raise ValueError(f"data.format: {self.data.format} cannot hold questions; extractive_qa reads json "
                                 "(SQuAD's nested file or a list of rows), jsonl or parquet")
        return self

    @model_validator(mode="after")
    def _init_controls(self):
        names = self.task_distill.teacher_init_controls
        try:
            _known_recipes(names)
        except ValueError as exc:
            raise ValueError(f"task_distill.teacher_init_controls: {exc}") from None
        for name in names:
            if name not in self.base.recipes:
                raise ValueError(f"task_distill.teacher_init_controls: {name} is not among base.recipes "
                                 f"{self.base.recipes}, so it has no student to compare with; add it there or leave "
                                 "it out here")
            if getattr(self.general_distill, name).from_ is not None:
                raise ValueError(f"task_distill.teacher_init_controls: {name}'s general student is given "
                                 f"(general_distill.{name}.from), not built from the teacher, so it has no "
                                 f"teacher-initialised start to compare with; leave {name} out")
        return self


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of `loc`, to suggest the nearest valid key."""
    model: Any = Params
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        ann = fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None:
            return None
    return model


# keys of earlier versions, with what replaced them
RENAMED = {"bf16": "replaced by 'precision: auto | fp32 | bf16 | fp16' (auto picks bf16 only where it is native)",
           "mlm_head": "moved to the top-level section 'teacher_mlm' (its own stage, shared by every recipe)"}


def _union_tag(part) -> bool:
    """pydantic's names for the branches of a union inside an error location (not keys of the params file)."""
    return isinstance(part, str) and (part.startswith(("function-after", "literal[", "constrained-", "list["))
                                      or part in ("int", "str", "float", "bool", "none"))


def _format_errors(err: ValidationError, source: str) -> str:
    lines: dict[str, str] = {}
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not _union_tag(p))
        path = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            owner = _model_at(loc)
            valid = list(owner.model_fields) if owner else []
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{'.'.join(map(str, loc[:-1] + (near[0],)))}'?" if near else ""
            if loc[-1] in RENAMED:
                hint = f"; {RENAMED[loc[-1]]}"
            lines[path] = f"{source}: unknown key '{path}'{hint} (valid keys here: {', '.join(valid)})"
        elif not loc and re.match(r"^[a-z_]+\.[a-z_.]+: ", e["msg"].removeprefix("Value error, ")):
            # a check across sections names its own key first ("base.task: ...")
            key, msg = e["msg"].removeprefix("Value error, ").split(": ", 1)
            lines[key] = f"{source}: key '{key}': {msg}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if path in lines:  # a union (e.g. a number or 'auto'): one line naming every accepted form
                lines[path] = lines[path].replace(" (got ", f", or {msg[0].lower()}{msg[1:]} (got ", 1)
            else:
                lines[path] = f"{source}: key '{path}': {msg} (got {e.get('input')!r})"
    return "\n".join(lines.values())


def parse_params(raw: dict | None, source: str = "params.yaml") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, source)) from None


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameters file not found (copy params.yaml from the project root)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(raw, dict) and "extends" in raw:
        # A profile may extend another params file (relative to itself) and override only what differs.
        base_path = path.parent / str(raw.pop("extends"))
        base = load_params(base_path).model_dump()
        raw = deep_merge(base, raw)
    if overrides:
        raw = deep_merge(raw or {}, overrides)
    return parse_params(raw, str(path))


REPLACED_MAPPINGS = ("variants",)  # named cells: a profile's replace the ones it extends


def deep_merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`, mapping by mapping. An empty mapping replaces what it extends (a profile's
    `variants: {}` means none), since merging nothing into it would silently keep the base's entries; so does a
    study's `variants`: a profile's levers are its own (the base's were chosen for another task, and each costs a
    cell per seed)."""
    out = dict(base)
    for k, v in extra.items():
        merge = isinstance(v, dict) and v and isinstance(out.get(k), dict) and k not in REPLACED_MAPPINGS
        out[k] = deep_merge(out[k], v) if merge else v
    return out
