"""The run's log: worker lines shown plainly, Beam's noise dropped, a clear stop message."""

import logging

from pipeline.logs import WorkerLines, stopped_message


def record(text, level=logging.INFO):
    return logging.LogRecord("apache_beam.runners.portability.local_job_service", level, "f", 1,
                             text, None, None)


def test_worker_lines_of_this_pipeline_are_shown_plainly():
    r = record('Worker: severity: INFO timestamp {   seconds: 1 } message: "progress: 5 documents'
               ' read, 4 done" log_location: "/app/transforms/io/progress.py:48" thread: "T"')
    assert WorkerLines().filter(r)
    assert r.getMessage() == "worker: progress: 5 documents read, 4 done" and r.name == "pipeline"


def test_beam_info_and_its_harmless_notice_are_dropped_warnings_kept():
    info = record('Worker: severity: INFO timestamp { } message: "Creating state cache" '
                  'log_location: "/x/apache_beam/runners/worker/sdk_worker.py:1" thread: "T"')
    noise = record('Worker: severity: WARN timestamp { } message: "No semi_persistent_directory '
                   'found: ..." log_location: "/x/sdk_worker_main.py:421" thread: "T"')
    warn = record('Worker: severity: WARN timestamp { } message: "disk almost full" '
                  'log_location: "/x/y.py:1" thread: "T"')
    assert not WorkerLines().filter(info) and not WorkerLines().filter(noise)
    assert WorkerLines().filter(warn) and warn.levelname == "WARNING"


def test_a_stopped_job_names_the_fault_not_its_message():
    wrapped = RuntimeError("torch.AcceleratorError: CUDA error: device-side assert triggered "
                           "while reading 'Paciente con fiebre' [while running 'Infer_s']")
    message = stopped_message(wrapped)
    assert "stopped on AcceleratorError" in message and "run the same command again" in message
    assert "Paciente" not in message


def test_the_stop_message_says_run_again_alone_only_where_that_can_help():
    import errno

    from transforms.handlers import ModelFault

    full = stopped_message(RuntimeError("OSError: [Errno 28] No space left on device: '/o/x'"))
    assert "stopped on OSError (a disk is full" in full and "free space" in full
    assert stopped_message(OSError(errno.ENOSPC, "full")).count("a disk is full") == 1
    broken = stopped_message(ModelFault("task t: the model failed on each of 8 windows"))
    assert "check the task's model" in broken and "will not help" in broken
    oom = stopped_message(RuntimeError("torch.OutOfMemoryError: CUDA out of memory."))
    assert "lower --max_tokens" in oom
    assert "/o/x" not in full  # the message's own text is never repeated


def test_the_stop_message_says_whether_the_run_committed_and_an_interruption_is_no_fault():
    fault = RuntimeError("OSError: [Errno 28] No space left on device: '/o/x'")
    assert "Nothing of this run was committed" in stopped_message(fault)
    after = stopped_message(fault, committed=True)
    assert "commit was recorded before it stopped" in after and "Nothing" not in after
    stopped = stopped_message(KeyboardInterrupt(), committed=True)
    assert "was interrupted" in stopped and "fault" not in stopped
    assert "commit was recorded" in stopped


def test_a_job_fenced_out_by_a_newer_one_says_so_and_not_to_run_again():
    wrapped = RuntimeError("transforms.io.fence.Fenced: run r2 (host h, pid 7) took the output "
                           "over (log entry 9) after run r1 began [while running 'Finalize']")
    said = stopped_message(wrapped, output="gs://b/out/")
    assert "another job took this output over" in said and "gs://b/out/_log/" in said
    assert "run the same command again" not in said and "\n" not in said
