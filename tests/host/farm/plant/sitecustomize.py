"""Planted faults for the simulated farm (tests/host/farm): put this folder on PYTHONPATH and Python imports it
at start-up in every farm subprocess. It changes nothing unless ``SDPHONE_TEST_PLANT`` names the worker the
process runs for (``SDPHONE_FARM_DEVICE``, set by host.farm):

    SDPHONE_TEST_PLANT="w2=slow:40,w3=crash"

``slow:MS`` adds MS milliseconds to every UNet invocation (a real slowdown, measured by the runner's own
clock); ``crash`` aborts the runner process (SIGABRT) at the first UNet invocation, as a native crash of the app
would; ``deploy-crash`` aborts the deploy process itself when it starts the runner.
"""
import os


def _plant() -> None:
    spec = dict(p.split("=", 1) for p in os.environ.get("SDPHONE_TEST_PLANT", "").split(",") if "=" in p)
    fault = spec.get(os.environ.get("SDPHONE_FARM_DEVICE", ""))
    if not fault:
        return
    import time

    if fault == "deploy-crash":
        import host.devices.host

        def start(self, run_dir_local):
            os.abort()

        host.devices.host.HostDevice.start = start
        return

    import host.runtime

    def planted(real_run):
        def run(self, **inputs):
            if os.path.basename(str(self.path)) == "unet.tflite":
                if fault == "crash":
                    os.abort()
                if fault.startswith("slow:"):
                    time.sleep(float(fault[5:]) / 1e3)
            return real_run(self, **inputs)
        return run

    for cls in (host.runtime.LiteRtModel, host.runtime.CompiledLiteRtModel):
        cls.run = planted(cls.run)


_plant()
