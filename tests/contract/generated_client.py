"""A client generated from Ferry's OpenAPI document (openapi-python-client), used
against a running node: the document must describe the API well enough for a
generator that trusts it. Run by scripts/api-contract.sh with the generated package on
PYTHONPATH and FERRY_CONTRACT_URL / FERRY_CONTRACT_TOKEN / FERRY_CONTRACT_DIR set.

Every answer must parse into the generated models (an answer the document does not
describe comes back as None or raises), and carry the values sent."""

import os
import sys

from ferry_client import AuthenticatedClient
from ferry_client.api.files import add_files, get_file, list_files
from ferry_client.api.jobs import cancel, create_job, get_job, list_jobs, set_properties
from ferry_client.api.system import cluster_status
from ferry_client.models import (
    AddFiles,
    JobInfo,
    JobList,
    NewFile,
    NewJob,
    Problem,
    PropertyChanges,
)


def expect(value, kind, what):
    if not isinstance(value, kind):
        sys.exit(f"{what}: expected a {kind.__name__}, got {value!r}")
    return value


def main():
    url = os.environ["FERRY_CONTRACT_URL"]
    token = os.environ["FERRY_CONTRACT_TOKEN"]
    root = os.environ["FERRY_CONTRACT_DIR"]
    client = AuthenticatedClient(base_url=url, token=token, raise_on_unexpected_status=True)

    status = cluster_status.sync(client=client)
    if status is None or not status.members:
        sys.exit(f"cluster status: {status!r}")

    spec = NewJob(
        display_name="generated client",
        files=[NewFile(remote_url="https://origin.example/a.bin", local_path=f"{root}/a.bin")],
    )
    job = expect(create_job.sync(client=client, body=spec), JobInfo, "create_job")
    if job.display_name != "generated client" or job.state.value != "suspended":
        sys.exit(f"create_job answered {job!r}")

    changes = PropertyChanges(description="set through a generated client", max_bandwidth=65536)
    job = expect(set_properties.sync(id=job.id, client=client, body=changes), JobInfo, "set")
    if job.properties.description != "set through a generated client":
        sys.exit(f"set_properties answered {job.properties!r}")
    if job.properties.max_bandwidth != 65536:
        sys.exit(f"max_bandwidth: {job.properties.max_bandwidth!r}")

    more = AddFiles(
        files=[NewFile(remote_url="https://origin.example/b.bin", local_path=f"{root}/b.bin")]
    )
    files = add_files.sync(id=job.id, client=client, body=more)
    if files is None or len(files.files) != 2:
        sys.exit(f"add_files answered {files!r}")
    second = get_file.sync(id=job.id, index=1, client=client)
    if second is None or second.remote_url != "https://origin.example/b.bin":
        sys.exit(f"get_file answered {second!r}")
    if len(list_files.sync(id=job.id, client=client).files) != 2:
        sys.exit("list_files does not list both files")

    listed = expect(list_jobs.sync(client=client), JobList, "list_jobs")
    if job.id not in [j.id for j in listed.jobs]:
        sys.exit("list_jobs does not list the job")

    missing = get_job.sync(id="00000000-0000-4000-8000-000000000000", client=client)
    expect(missing, Problem, "get_job of an unknown job")
    if missing.status != 404:
        sys.exit(f"unknown job: {missing!r}")

    done = cancel.sync(id=job.id, client=client)
    if done is None or done.job.state.value != "cancelled":
        sys.exit(f"cancel answered {done!r}")
    print(f"generated client: created, changed, listed and cancelled job {job.id}")


if __name__ == "__main__":
    main()
