"""The two graphs' inputs and outputs by name: the contract the model's graphs (graphs.py, torch) meet and
every backend (ONNX Runtime, TensorRT, torch) calls. No torch here: a runtime without torch reads it."""

CONDITIONER_INPUTS = ("feats", "prosody", "text", "audio_keep", "text_keep", "prev_expr", "prev_pose", "known", "n_new")
CONDITIONER_OUTPUTS = ("f_e", "f_h", "key_prob_e", "key_value_e", "key_prob_p", "key_value_p")
DENOISER_INPUTS = ("x_expr", "x_pose", "known", "key_prob_e", "key_value_e", "key_prob_p", "key_value_p",
                   "f_e", "f_h", "t", "style")
DENOISER_OUTPUTS = ("x0_expr", "x0_pose")
INT64_INPUTS = frozenset({"text", "t"})  # token ids and diffusion steps; everything else is float32
