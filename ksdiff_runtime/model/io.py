"""The graphs' inputs and outputs by name: the contract the model's graphs (graphs.py, torch) meet and
every backend (ONNX Runtime, TensorRT, torch) calls. No torch here: a runtime without torch reads it."""

CONDITIONER_INPUTS = ("feats", "prosody", "text", "audio_keep", "text_keep", "prev_expr", "prev_pose", "known", "n_new")
CONDITIONER_OUTPUTS = ("f_e", "f_h", "key_prob_e", "key_value_e", "key_prob_p", "key_value_p")
DENOISER_INPUTS = ("x_expr", "x_pose", "known", "key_prob_e", "key_value_e", "key_prob_p", "key_value_p",
                   "f_e", "f_h", "t", "style")
FACE_OUTPUT, HEAD_OUTPUT = "x0_expr", "x0_pose"  # the expression denoiser's and the pose (head) denoiser's
DENOISER_OUTPUTS = (FACE_OUTPUT, HEAD_OUTPUT)
# The denoiser's two paths share no weights and no computation: each is also a graph of its own (cut from the
# denoiser's at export), its output and the inputs it reads, which a CPU backend runs at once on two cores for
# a small batch (backends/onnxruntime_backend.py).
DENOISER_PATHS = {FACE_OUTPUT: ("x_expr", "known", "key_prob_e", "key_value_e", "f_e", "t", "style"),
                  HEAD_OUTPUT: ("x_pose", "known", "key_prob_p", "key_value_p", "f_h", "t", "style")}
INT64_INPUTS = frozenset({"text", "t"})  # token ids and diffusion steps; everything else is float32

# The stream conditioner (model/streaming.py): the conditioner's inputs, the committed-frame count, and the
# encoder state a live stream carries from hop to hop; its outputs are the conditioner's and the state after.
STREAM_STATE = ("s_msdc", "s_pros", "s_pmid", "s_h", "s_m", "s_fe", "s_fh")
STREAM_STATE_OUT = tuple(f"{name}_out" for name in STREAM_STATE)
STREAM_CONDITIONER_INPUTS = (*CONDITIONER_INPUTS, "n_commit", *STREAM_STATE)
STREAM_CONDITIONER_OUTPUTS = CONDITIONER_OUTPUTS + STREAM_STATE_OUT

# The style encoder (KSDiff.style_of): reference takes cut in windows of the style clip's length, in natural
# units (52 blendshape weights then pitch, yaw, roll in radians) -> one unit-norm style vector per window. It
# runs once per reference take (engine/network_style.py), not per hop.
STYLE_ENCODER_INPUTS = ("take",)
STYLE_ENCODER_OUTPUTS = ("style",)
