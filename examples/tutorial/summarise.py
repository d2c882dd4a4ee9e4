"""The tutorial's second step: one run per result of the first task.

Run as `python3 summarise.py -d %DATA -c %IN -o %OUT` by a task created with `--after`: %IN is one
result.json written by job.py (the first task's outputs, registered as a dataset with
`orchestra_registry --from-task`), %DATA the same data file. It writes summary.txt to %OUT.
"""
import argparse
import json
import pathlib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--data", required=True, help="the data file (%%DATA)")
    parser.add_argument("-c", "--config", required=True, help="one result.json of the first step (%%IN)")
    parser.add_argument("-o", "--output", required=True, help="this job's output directory (%%OUT)")
    args = parser.parse_args()
    result = json.loads(pathlib.Path(args.config).read_text())
    line = f"{result['config']}: mean x scale = {result['mean_scaled']} over {result['n']} values"
    pathlib.Path(args.output, "summary.txt").write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
