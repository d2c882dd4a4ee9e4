"""The tutorial's job: one run per config file.

Orchestra runs it as `python3 job.py -d %DATA -c %IN -o %OUT`: %DATA is the data file (a CSV of
numbers, one per line after a header), %IN this job's config file (JSON: a name and a scale), %OUT
this job's own output directory (it already exists, and the job runs inside it). It writes
result.json there; what it prints goes to the job's log (`maestro job logs JOB`).
"""
import argparse
import csv
import json
import pathlib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--data", required=True, help="the data file (%%DATA)")
    parser.add_argument("-c", "--config", required=True, help="this job's config file (%%IN)")
    parser.add_argument("-o", "--output", required=True, help="this job's output directory (%%OUT)")
    args = parser.parse_args()
    config = json.loads(pathlib.Path(args.config).read_text())
    with open(args.data, newline="") as data:
        values = [float(row["value"]) for row in csv.DictReader(data)]
    mean = sum(values) / len(values)
    result = {"config": config["name"], "n": len(values), "mean_scaled": round(mean * config["scale"], 3)}
    pathlib.Path(args.output, "result.json").write_text(json.dumps(result) + "\n")
    print(f"{config['name']}: {len(values)} values, mean x {config['scale']} = {result['mean_scaled']}")


if __name__ == "__main__":
    main()
