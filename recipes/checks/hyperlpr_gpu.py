"""warmstart check: HyperLPR3 reads a plate, on the GPU where there is one.

Builds HyperLPR3's own pipeline the way a user does (`hyperlpr3.LicensePlateCatcher()`), reads
the sample photo, and prints for each onnxruntime session (detector, recognizer, classifier)
the providers it asked for, had when created, and ran on. Every session is run at least once
(the recognizer and classifier on the plate the detector found). On a machine with an NVIDIA
GPU it fails unless every session ran on CUDA; without one it reports the CPU and passes.
"""

import sys
from pathlib import Path

from onnxruntime_cuda import fail, gpu_count  # beside this file

PHOTO = Path("samples/test_img.jpg")  # a recipe asset, in the workdir (this check's folder)


def main() -> None:
    import cv2
    import onnxruntime as ort

    asked = {}
    create = ort.InferenceSession.__init__

    def spy(self, *args, **kwargs):  # InferenceSession(path, sess_options, providers, ...)
        asked[id(self)] = kwargs.get("providers", args[2] if len(args) > 2 else None)
        create(self, *args, **kwargs)

    ort.InferenceSession.__init__ = spy  # only to see what hyperlpr3 asks for; nothing is changed
    import hyperlpr3 as lpr3

    catcher = lpr3.LicensePlateCatcher()
    ort.InferenceSession.__init__ = create
    pipeline = catcher.pipeline
    models = {"detector": pipeline.detector, "recognizer": pipeline.recognizer, "classifier": pipeline.classifier}
    created = {name: model.session.get_providers() for name, model in models.items()}

    image = cv2.imread(str(PHOTO))
    if image is None:
        fail(f"cannot read the sample photo {PHOTO.resolve()}")
    plates = catcher(image)
    boxes = pipeline.detector(image)
    if not len(boxes):
        fail(f"HyperLPR3 found no plate in {PHOTO}")
    from hyperlpr3.common.tools_process import get_rotate_crop_image

    plate = get_rotate_crop_image(image, boxes[0][5:13].reshape(4, 2).astype(int))
    pipeline.recognizer(plate)
    pipeline.classifier(plate)

    x1, y1, x2, y2, score = (float(v) for v in boxes[0][:5])
    print(f"{PHOTO.name}: plate at ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}), score {score:.2f}; "
          f"read as {[p[0] for p in plates]}")
    on_cpu, cpu_only = [], []
    for name, model in models.items():
        ran = model.session.get_providers()
        wanted = asked.get(id(model.session))
        print(f"{name}: asked {wanted or 'onnxruntime default'}, created with {created[name]}, ran on {ran[0]}")
        if ran[0] != "CUDAExecutionProvider":
            on_cpu.append(name)
        if "CUDAExecutionProvider" not in (wanted or ()):
            cpu_only.append(name)
    gpus = gpu_count()
    if gpus and cpu_only:
        fail(f"this machine has {gpus} NVIDIA GPU(s), but hyperlpr3 asked for the CPU alone for its "
             f"{', '.join(cpu_only)}: the recipe's hyperlpr3 patch is not applied")
    if gpus and on_cpu:
        fail(f"this machine has {gpus} NVIDIA GPU(s), but HyperLPR3's {', '.join(on_cpu)} ran on the CPU: "
             "onnxruntime's CUDA provider did not load (the other check names the library it lacks)")
    print("HyperLPR3 ran on " + ("the GPU (CUDA)" if gpus else "the CPU: there is no NVIDIA GPU here"))


if __name__ == "__main__":
    sys.exit(main())
