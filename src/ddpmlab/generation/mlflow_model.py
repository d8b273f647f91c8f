"""A trained DDPM as an MLflow pyfunc model: ``predict`` draws images for given seeds.

The model is logged as code (MLflow's models-from-code, no pickle): MLflow runs this file at
load time, and ``set_model`` below names the model. The folder (``pipeline.model_registry``)
carries the EMA weights as the artifact ``checkpoint`` (``model.trained.export_for_sampling``)
and the ddpmlab code this file imports, so ``mlflow.pyfunc.load_model`` needs torch, numpy and
mlflow, not a ddpmlab install. Nothing imports this module: the train stage that logs it never
depends on the samplers.

    model = mlflow.pyfunc.load_model("models:/ddpmlab@champion")
    images = model.predict(pd.DataFrame({"seed": range(16)}), params={"sampler": "dpmpp_2m", "steps": 10})
    # uint8 (16, C, H, W); image j from seed j, as `ddpmlab generate --seeds 0-15` draws it

Input: a column ``seed`` (int64, >= 0) and, for conditional models, an optional ``class_label``
(the class each image is asked to be; default: classes 0, 1, ... in turn). Params: the sampler,
steps, spacing, guidance, every sampler option (eta, variance...), clip_x0, precision,
batch_size and device, with `ddpmlab generate`'s defaults.
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import pandas as pd

from ddpmlab.generation.request import build_request
from ddpmlab.model.defaults import default_settings, option_fields
from ddpmlab.model.draw import draw_images
from ddpmlab.model.trained import TrainedDiffusion, read_checkpoint
from ddpmlab.nn.autotune import planned_calls
from ddpmlab.nn.devices import resolve_device
from ddpmlab.nn.hardware_names import switch


class DiffusionPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.info, self.payload = read_checkpoint(context.artifacts["checkpoint"])
        self.trained: dict[str, TrainedDiffusion] = {}  # per device, built on first use

    def predict(self, context, model_input: pd.DataFrame, params=None):  # a DataFrame hint: MLflow keeps the logged signature
        """uint8 images (len(model_input), C, H, W): image j from seed ``model_input["seed"][j]``."""
        settings = {**default_settings(self.info.T), **(params or {})}
        seeds = [int(s) for s in model_input["seed"]]
        classes = [int(c) for c in model_input["class_label"]] if "class_label" in model_input else None
        options = {name: settings[name] for name in option_fields()}
        request = build_request(
            self.info, sampler=settings["sampler"], steps=int(settings["steps"]), seeds=seeds, spacing=settings["spacing"],
            guidance=float(settings["guidance"]), classes=classes, options=options, clip_x0=bool(settings["clip_x0"]),
            precision=settings["precision"], batch_size=int(settings["batch_size"]),
        )  # fmt: skip
        device = resolve_device(settings["device"])
        if str(device) not in self.trained:
            self.trained[str(device)] = TrainedDiffusion.from_payload(self.info, self.payload, device)
        trained = self.trained[str(device)]
        batch = min(request.batch_size, len(request.seeds))
        layout = switch(settings["channels_last"])
        network = trained.sampling_network(request.precision, False, layout, batch, planned_calls(len(request.seeds), batch, request.run.nfe))
        return draw_images(trained, network, request.run, request.seeds, request.labels(), clip_x0=request.clip_x0,
                           batch_size=request.batch_size, device=device)  # fmt: skip


mlflow.models.set_model(DiffusionPyfunc())
