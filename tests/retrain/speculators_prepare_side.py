"""speculators' own data preparation over a conversation JSONL, run with the speculators venv's python.

    .venv-compat/bin/python speculators_prepare_side.py TARGET_DIR DATA.jsonl OUT.json

`prepare-data` asks a vLLM server's `/v1/chat/completions/render` endpoint to render each
conversation; here a server on 127.0.0.1 answers it the way vLLM does (the target tokenizer's chat
template, then the tokenizer without added special tokens). speculators loads the file, normalizes
the roles, renders and masks each assistant turn; OUT.json holds its rows (input_ids, loss_mask and
the supervised tokens decoded).
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from speculators.data_generation.preprocessing import load_and_preprocess_dataset
from transformers import AutoTokenizer


def render_server(tokenizer: object) -> ThreadingHTTPServer:
    class Render(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions/render":
                self.send_error(404)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
                body["messages"], tokenize=False, add_generation_prompt=body["add_generation_prompt"]
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
            payload = json.dumps({"token_ids": ids}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Render)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(target_dir: str, data: str, out: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    server = render_server(tokenizer)
    try:
        dataset, _ = load_and_preprocess_dataset(
            target_dir,
            [data],
            seq_length=4096,
            build_dataset_num_proc=1,
            render_endpoint=f"http://127.0.0.1:{server.server_address[1]}",
        )
    finally:
        server.shutdown()
    rows = []
    for row in dataset:
        ids, mask = row["input_ids"].tolist(), row["loss_mask"].tolist()
        supervised = [token for token, keep in zip(ids, mask, strict=True) if keep]
        rows.append({"input_ids": ids, "loss_mask": mask, "supervised": tokenizer.decode(supervised)})
    Path(out).write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:4])
