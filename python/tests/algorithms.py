"""Source text of the algorithm folders the end-to-end tests deploy."""

from __future__ import annotations

MAIN_RUNNER = '''
import sys
import threading

from compox.algorithm_utils.Image2ImageRunner import Image2ImageRunner
from compox.algorithm_debug import debug
from dependencies.utils import invert
import dependencies.helpers
import dependencies.helpers as helpers_alias

COUNTERS = {"init": 0, "load_assets": 0}


class Runner(Image2ImageRunner):
    """Inverts images; args["mode"] selects extra behaviour used by the tests."""

    def __init__(self):
        super().__init__()
        COUNTERS["init"] += 1
        self.weight = 1.0

    def load_assets(self):
        COUNTERS["load_assets"] += 1
        self.config = self.fetch_asset("files/config.txt").read().decode()

    def inference(self, data, args=None):
        mode = args.get("mode", "plain")
        print("printed from inference")
        print("partial line without newline", end="")
        print(" completed", file=sys.stdout)
        print("to stderr", file=sys.stderr)
        if mode == "swallow_stop":
            for step in range(5):
                try:
                    self.set_progress(0.1 * (step + 1))
                except Exception:
                    pass
        elif mode == "thread":
            worker = threading.Thread(target=lambda: self.set_progress(0.25))
            worker.start()
            worker.join()
        elif mode == "exit":
            raise SystemExit(3)
        elif mode == "background_printer":
            import time

            def chatter():
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:
                    print("BG-LEAK from an earlier execution")
                    time.sleep(0.0005)

            threading.Thread(target=chatter, daemon=True).start()
            time.sleep(0.02)
        elif mode == "session":
            try:
                count = self.load_item_from_session("count")
            except KeyError:
                count = 0
            self.save_item_to_session(count + 1, "count")
            self.log_message(f"session count={count + 1}")
        elif mode == "backslash_asset":
            self.log_message(self.fetch_asset("files\\\\config.txt").read().decode())
        else:
            self.set_progress(0.5)
        self.log_message(
            f"config={self.config} device={self.device} "
            f"helpers={dependencies.helpers.NAME}/{helpers_alias.NAME}"
        )
        return invert(data)

    def postprocess(self, data, args=None):
        returns = args.get("returns")
        if returns == "none":
            return None
        if returns == "string":
            return "abc"
        if returns == "foo":
            return ["This is Foo!"]
        return super().postprocess(data, args)


if __name__ == "__main__":
    debug()
'''

MAIN_FILES = {
    "Runner.py": MAIN_RUNNER,
    "dependencies/utils.py": '''
        from dependencies.helpers import NAME


        def invert(data):
            return data.max() - data
    ''',
    "dependencies/helpers.py": '''
        NAME = "helpers"
    ''',
}

CRASHING_INIT_FILES = {
    "Runner.py": '''
        from compox.algorithm_utils.Image2ImageRunner import Image2ImageRunner


        class Runner(Image2ImageRunner):
            def __init__(self):
                super().__init__()
                raise RuntimeError("init exploded")

            def inference(self, data, args=None):
                return data
    ''',
}

UNKNOWN_ASSET_FILES = {
    "Runner.py": '''
        from compox.algorithm_utils.Image2ImageRunner import Image2ImageRunner


        class Runner(Image2ImageRunner):
            def load_assets(self):
                self.model = self.fetch_asset("files/missing.bin")

            def inference(self, data, args=None):
                return data
    ''',
}

MISSING_DEPENDENCY_FILES = {
    "Runner.py": '''
        import compox_test_package_that_does_not_exist
        from compox.algorithm_utils.Image2ImageRunner import Image2ImageRunner


        class Runner(Image2ImageRunner):
            def inference(self, data, args=None):
                return data
    ''',
}
