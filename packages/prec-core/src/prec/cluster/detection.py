"""Cluster schedulers that start every process themselves: SLURM's ``srun``.

``srun --ntasks-per-node N python train.py`` starts one task per device on every node, and describes each task with
``SLURM_*`` variables instead of torch's. prec translates them as Lightning's ``SLURMEnvironment`` does:

=================  ===============================================================================
torch variable     from SLURM
=================  ===============================================================================
``RANK``           ``SLURM_PROCID``
``WORLD_SIZE``     ``SLURM_NTASKS``
``LOCAL_RANK``     ``SLURM_LOCALID``
``NODE_RANK``      ``SLURM_NODEID``
``MASTER_ADDR``    the first host of ``SLURM_NODELIST`` (unless ``MASTER_ADDR`` is set)
``MASTER_PORT``    ``15000 + the last 4 digits of SLURM_JOB_ID`` (unless ``MASTER_PORT`` is set)
=================  ===============================================================================

SLURM manages the processes only when it started as many tasks as the Trainer wants processes
(``SLURM_NTASKS == devices * num_nodes``, Lightning's rule). A job of one task (``sbatch`` running ``python
train.py``) is left to prec, which starts the local processes itself; any other count is a
:class:`~prec.ConfigurationError`. Variables a launcher already set win: ``torchrun`` inside ``srun`` (one task per
node) sets ``RANK`` itself, and then SLURM's variables are ignored. An interactive allocation (``SLURM_JOB_NAME``
``bash`` or ``interactive``) is ignored too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from prec.errors import ConfigurationError

#: SLURM_JOB_NAME values of an interactive shell in an allocation (Lightning's rule).
INTERACTIVE_JOB_NAMES = ("bash", "interactive")
#: MASTER_PORT = this + the last four digits of SLURM_JOB_ID (Lightning's rule, so both agree on a cluster).
SLURM_PORT_BASE = 15000


def slurm_detected(environ: Mapping[str, str] | None = None) -> bool:
    """True in a task that ``srun`` started for a job of one or more tasks (not an interactive shell)."""
    environ = os.environ if environ is None else environ
    if "SLURM_NTASKS" not in environ or "SLURM_PROCID" not in environ:
        return False
    return environ.get("SLURM_JOB_NAME") not in INTERACTIVE_JOB_NAMES


def first_host(nodelist: str) -> str:
    """The first host name of a SLURM node list: ``"node[003-005,9],gpu1"`` -> ``"node003"``."""
    nodes = re.sub(r"\[(.*?)[,-].*\]", r"\1", nodelist)  # the first node of every range
    nodes = re.sub(r"\[(.*?)\]", r"\1", nodes)  # a range of one: "node[7]"
    return nodes.split(" ")[0].split(",")[0]


def slurm_port(job_id: str) -> int:
    """The rendezvous port every task of the job derives from its id."""
    digits = "".join(character for character in job_id if character.isdigit())
    return SLURM_PORT_BASE + int(digits[-4:] or 0)


def slurm_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """torch's launch variables for this SLURM task (see the module docstring)."""
    world_size = int(environ["SLURM_NTASKS"])
    nodes = int(environ.get("SLURM_NNODES", environ.get("SLURM_JOB_NUM_NODES", "1")))
    variables = {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "NODE_RANK": environ.get("SLURM_NODEID", "0"),
        "LOCAL_WORLD_SIZE": str(max(world_size // max(nodes, 1), 1)),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or first_host(environ.get("SLURM_NODELIST", "127.0.0.1")),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(slurm_port(environ.get("SLURM_JOB_ID", "0"))),
        "PREC_CLUSTER": "slurm",
    }
    return variables


def adopt_cluster_environment(processes: int) -> str | None:
    """Export torch's variables for a SLURM task that no launcher described, when SLURM started ``processes``
    tasks; return the cluster's name (``None``: no cluster manages the processes)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return os.environ.get("PREC_CLUSTER")
    if not slurm_detected():
        return None
    tasks = int(os.environ["SLURM_NTASKS"])
    if tasks == 1 and processes > 1:
        return None  # one task: prec starts the local processes itself
    if tasks != processes:
        raise ConfigurationError(
            f"SLURM started SLURM_NTASKS={tasks} tasks, but the Trainer wants devices x num_nodes = {processes}"
            " processes. Make them agree: `srun --nodes <num_nodes> --ntasks-per-node <devices>` (one task per"
            " device), or run torchrun inside srun with one task per node."
        )
    os.environ.update(slurm_variables(os.environ))
    return "slurm"
