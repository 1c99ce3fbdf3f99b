#!/usr/bin/env nextflow
/*
 * perturbcast on Nextflow: the benchmark DAG of `perturbcast benchmark` for clusters and cloud batch.
 * Written for Nextflow >= 24.04.0 (manifest.nextflowVersion); parameters: nextflow_schema.json (`--help`).
 *
 *   nextflow run . -profile test,docker                                   # tiny simulated benchmark
 *   nextflow run . -profile docker,awsbatch --aws_queue Q --publish_dir s3://bucket/results -work-dir s3://bucket/work
 *   nextflow run . -entry process_datasets --publish_dir s3://bucket/datasets     # prepare the datasets once
 *   nextflow run . --datasets_dir s3://bucket/datasets --publish_dir ...          # ... and start from them
 *   nextflow run . -params-file my_benchmark.yaml                                  # the spec of `perturbcast benchmark --spec`
 *
 * One planner for both engines: the PLAN process runs `perturbcast plan --json` (tooling image) and this file
 * only wires channels from its steps. Every step names its component, its arguments, its input and output
 * paths in the results layout, its dependencies and its component's resource labels; a step starts when every
 * input it lists has been made (stepsWithInputs), in the process of its stage that carries its labels (the
 * generated block at the end; `withLabel:` in conf/base.config), through `perturbcast step`, which leaves the
 * engine's step.json. Splits are checked for leakage (CHECK)
 * before any method sees them; AGGREGATE builds results, OpenProblems files, trace.tsv and report.html from the
 * step records, score files and datasets' uns, like the engine does.
 *
 * Published to params.publish_dir (the engine's layout):
 *   datasets/<dataset>/                                  dataset.h5ad, step.json, log.txt, dataset_uns.yaml
 *   tasks/<dataset>/<task>/seed_<s>/fold_<f>/            train/test/solution.h5ad, step.json, check.json, log.txt
 *   predictions/.../<method>/, scores/.../<method>/<metric>/
 *   results.parquet, score_uns.yaml, dataset_uns.yaml, method_configs.yaml, metric_configs.yaml, task_info.yaml,
 *   trace.tsv (step records), report.html, state.yaml, trace.txt (Nextflow's trace, where OpenProblems looks),
 *   pipeline_info/ (plan.json, Nextflow's report, timeline, dag)
 */
nextflow.enable.dsl = 2

include { validateParameters } from 'plugin/nf-schema'

// the keys of the params that choose what runs: what `perturbcast plan --spec` reads (perturbcast/spec.py)
SELECTION_KEYS = ['datasets', 'tasks', 'methods', 'metrics', 'priors', 'exclude_datasets', 'exclude_tasks', 'exclude_methods',
                  'exclude_metrics', 'seeds', 'n_folds', 'folds', 'use_test_arguments']

workflow {
    main:
    validateParameters()
    warnOpenProblemsParams(params)
    benchmark()
}

// OpenProblems' launch params belong to the viash workflow (src/workflows/run_benchmark, built by `viash ns build`)
def warnOpenProblemsParams(Map p) {
    def given = ['input_states', 'rename_keys', 'output_state', 'settings'].findAll { p[it] != null }
    if (given) {
        log.warn("perturbcast: ${given.collect { '--' + it }.join(', ')} are the params of the viash workflow " +
                 "target/nextflow/workflows/run_benchmark/main.nf (viash ns build); this main.nf plans from the selection params and ignores them")
    }
}

// The benchmark: plan, datasets (or the prepared ones of --datasets_dir), splits and their leakage checks,
// predictions, scores, results.
workflow benchmark {
    main:
    def project = projectChannels()
    def tooling = toolingImage(params, project.version)
    def plan = planned(PLAN(Channel.of([tooling, planSpec(params), []]), Channel.value(userDataFiles(params)), project.tooling))
    plan.subscribe { Map p ->
        log.info("perturbcast: ${p.steps.size()} steps planned (${p.steps.countBy { it.stage }.collect { k, v -> "${v} ${k}" }.join(', ')}), " +
                 "the score steps in ${p.score_units.size()} tasks (one per prediction and image), " +
                 "${p.not_applicable.size()} not applicable by declaration; results in ${params.publish_dir}")
    }
    def steps = plan.flatMap { it.steps }.filter { !params.dry_run }
    if (params.dry_run) {
        plan.flatMap { it.steps }.subscribe { step ->
            println("${step.id}\t${step.component ? step.component.namespace + '/' + step.component.name : 'perturbcast check-split'}") }
    }

    // datasets: made here, or taken from params.datasets_dir
    def datasetSteps = steps.filter { it.stage == 'dataset' }.branch { step ->
        prepared: isPrepared(step)
        make: true
    }
    DATASETS(datasetSteps.make, userFiles(plan), project.runner, project.shared)
    def datasetFiles = layoutFiles(DATASETS.out.files).mix(datasetSteps.prepared.flatMap { step ->
        step.outputs.values().collect { path -> [step.id, path.toString(), file("${params.datasets_dir}/${path}")] } })
    def preparedRecords = datasetSteps.prepared.flatMap { step ->
        ['step.json', 'dataset_uns.yaml', 'log.txt'].collect { name -> ["${step.directory}/${name}".toString(), file("${params.datasets_dir}/${step.directory}/${name}")] }
            .findAll { it[1].exists() } }

    // splits, then perturbcast's leakage checks; methods see a split only after its check passed
    SPLITS(steps.filter { it.stage == 'split' }, withoutIds(datasetFiles), project.runner, project.shared)
    def splitFiles = layoutFiles(SPLITS.out.files)
    CHECK(stepsWithInputs(steps.filter { it.stage == 'check' }, withoutIds(datasetFiles.mix(splitFiles)))
              .map { step, staged -> [step, staged, tooling] },
          project.runner)
    def passed = CHECK.out.record
        .filter { step, record -> step.kind == 'split' && readJson(record).status == 'ok' }
        .map { step, record -> [step.guards] }
    def checkedSplitFiles = withoutIds(splitFiles.combine(passed, by: 0))

    // priors: from outside the data (per dataset) or learnt from a checked split's method-visible files
    PRIORS(steps.filter { it.stage == 'prior' }, withoutIds(datasetFiles).mix(checkedSplitFiles), project.runner, project.shared)
    def priorFiles = withoutIds(layoutFiles(PRIORS.out.files))

    // predictions: split x (control) method (x prior); scores: one task per score unit (the metrics of one
    // prediction that share an image), each metric with its own step.json and status
    PREDICTIONS(steps.filter { it.stage == 'predict' }, checkedSplitFiles.mix(priorFiles), project.runner, project.shared)
    def predictionFiles = layoutFiles(PREDICTIONS.out.files)
    def units = plan.flatMap { it.score_units }.filter { !params.dry_run }
    SCORES(units, checkedSplitFiles.mix(withoutIds(predictionFiles)), project.runner, project.shared)

    // results: every step record, log, dataset uns and score file in its layout path, aggregated once
    // (combine flattens one level: the list of items goes in wrapped)
    def collected = withoutIds(layoutFiles(
            DATASETS.out.records.mix(SPLITS.out.records, PRIORS.out.records, PREDICTIONS.out.records, SCORES.out.records,
                                     CHECK.out.record)))
        .mix(withoutIds(layoutFiles(SCORES.out.files)), preparedRecords)
    AGGREGATE(
        PLAN.out.plan
            .combine(collected.toList().map { items -> [items] })
            .filter { !params.dry_run }
            .map { planJson, items -> [tooling, items.collect { it[0] }, items.collect { it[1] }, planJson] },
        project.tooling)
    AGGREGATE.out.leaderboard.view { leaderboard -> "\nLeaderboard (calibrated: 0 = training mean baseline, 1 = replicate ceiling)\n${leaderboard.text}" }
}

// Prepare the datasets once: the dataset steps only, published as datasets/<id>/{dataset.h5ad, step.json,
// dataset_uns.yaml, log.txt, state.yaml (OpenProblems' id and files)}; later runs start from them with
// --datasets_dir
workflow process_datasets {
    main:
    validateParameters()
    def project = projectChannels()
    def plan = planned(PLAN(Channel.of([toolingImage(params, project.version), planSpec(params), ['dataset']]),
                            Channel.value(userDataFiles(params)), project.tooling))
    DATASETS(plan.flatMap { it.steps }.filter { it.stage == 'dataset' && !params.dry_run }, userFiles(plan), project.runner, project.shared)
    DATASETS.out.records
        .filter { step, made -> (made instanceof List ? made : [made]).any { it.name == 'step.json' } }
        .subscribe { step, made -> log.info("perturbcast: ${step.id} made (${params.publish_dir}/${step.directory})") }
}

workflow.onComplete {
    log.info("perturbcast: ${workflow.success ? 'done' : 'stopped'}; results, report.html and Nextflow's trace.txt in " +
             "${params.publish_dir} (to use Nextflow's wall times and memory in the report: perturbcast aggregate " +
             "${params.publish_dir} --plan ${params.publish_dir}/pipeline_info/plan.json)")
}

// ==================================================================== tooling processes (perturbcast itself)

// `perturbcast plan --json` for the selection of the run (the params, written as a spec file; the user's own
// dataset files staged under user_data/)
process PLAN {
    tag 'plan'
    label 'lowcpu'
    label 'lowmem'
    label 'lowtime'
    label 'tooling'
    container "${image}"
    publishDir "${params.publish_dir}/pipeline_info", mode: params.publish_mode

    input:
    tuple val(image), val(spec), val(stages)
    path(user_files, stageAs: 'user_data/in*/*')
    path(project_files, stageAs: 'project/*')

    output:
    path('plan.json'), emit: plan

    script:
    def only = stages ? "--stages ${stages.join(' ')}" : ''
    """
    cat > spec.yaml <<'PERTURBCAST_SPEC'
    ${spec}
    PERTURBCAST_SPEC
    export PYTHONPATH="\$PWD/project\${PYTHONPATH:+:\$PYTHONPATH}"
    export PYTHONDONTWRITEBYTECODE=1
    # the project where its src/ really is (a local executor stages it as a link), so config paths stay inside it
    root="\$(dirname "\$(readlink -f project/src)")"
    ${params.python} -m perturbcast plan --json --project "\$root" --spec spec.yaml ${only} > plan.json
    """
}

// perturbcast's leakage checks (perturbcast.leakage) on a split, or on every fold of a partition
process CHECK {
    tag "${step.id}"
    label 'lowcpu'
    label 'lowmem'
    label 'lowtime'
    label 'tooling'
    container "${image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), val(image)
    path(project_files, stageAs: 'project/*')

    output:
    tuple val(step), path("${step.directory}/${step.kind == 'split' ? 'check.json' : 'partition_check.json'}"), emit: record

    script:
    """
    cat > plan_step.json <<'PERTURBCAST_STEP'
    ${groovy.json.JsonOutput.toJson(step)}
    PERTURBCAST_STEP
    export PYTHONPATH="\$PWD/project\${PYTHONPATH:+:\$PYTHONPATH}"
    export PYTHONDONTWRITEBYTECODE=1
    ${params.python} -m perturbcast step plan_step.json ${params.fail_fast ? '--fail-fast' : ''}
    """
}

// Results, OpenProblems files, trace.tsv, report.html and state.yaml from the step records, score files,
// datasets' uns and logs, linked back to their layout paths: `perturbcast aggregate --plan`
process AGGREGATE {
    tag 'results'
    label 'lowcpu'
    label 'midmem'
    label 'lowtime'
    label 'tooling'
    container "${image}"
    cache false  // cheap, and it must see every change of the aggregation code
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(image), val(paths), path(files, stageAs: 'staged/in*/*'), path(plan, stageAs: 'pipeline_info/plan.json')
    path(project_files, stageAs: 'project/*')

    output:
    path('*.{parquet,yaml,html,txt,tsv}'), emit: results
    path('leaderboard.txt'), emit: leaderboard, optional: true

    script:
    """
    cat > staged_paths.json <<'PERTURBCAST_PATHS'
    ${groovy.json.JsonOutput.toJson(paths)}
    PERTURBCAST_PATHS
    export PYTHONPATH="\$PWD/project\${PYTHONPATH:+:\$PYTHONPATH}"
    export PYTHONDONTWRITEBYTECODE=1
    root="\$(dirname "\$(readlink -f project/src)")"  # as in PLAN
    ${params.python} -m perturbcast aggregate . --project "\$root" --plan pipeline_info/plan.json \\
        --staged staged --staged-paths staged_paths.json --state-id '${workflow.runName}'
    """
}

// ==================================================================== functions: wiring from the plan
// No component, argument or selection logic: the plan (perturbcast/plan_cli.py) decides all of it.

// The task of every component step: `perturbcast step` on the step as the plan lists it (perturbcast/step_cli.py);
// a score unit runs its member steps, their components staged side by side in project/src/component/.
// Any container, any user: in a container (containerEngine set) HOME is the task's own folder (docker runs as
// the launching user, whose home is not in the image), the loaders' download cache is params.cache_dir or the
// task's folder, and model environments are not built at run time (PERTURBCAST_ISOLATED_ENVIRONMENTS=0: the
// images carry the models' packages). Without a container a writable home and the user's cache are kept (local
// runs reuse downloads and the models' environments), an unwritable home is replaced the same way.
String stepScript(Map step, attempt, cpus, memoryMegabytes, Map p, containerEngine = null) {
    def component = step.steps ? '--components project/src/component' : "--component project/src/component/${step.component.name}"
    def options = [cpus ? "--cpus ${cpus}" : '', memoryMegabytes ? "--memory ${memoryMegabytes}MB" : '', p.fail_fast ? '--fail-fast' : '']
    def home = containerEngine ? 'export HOME="\$PWD/.home"' : 'if [ ! -d "\${HOME:-}" ] || [ ! -w "\${HOME:-}" ]; then export HOME="\$PWD/.home"; fi'
    def cache = p.cache_dir ? "export PERTURBCAST_CACHE='${p.cache_dir}'" :
        (containerEngine ? 'export PERTURBCAST_CACHE="\$PWD/.perturbcast_cache"' : 'export PERTURBCAST_CACHE="\${PERTURBCAST_CACHE:-\$HOME/.cache/perturbcast}"')
    return """\
        cat > plan_step.json <<'PERTURBCAST_STEP'
        ${groovy.json.JsonOutput.toJson(step)}
        PERTURBCAST_STEP
        export PYTHONPATH="\$PWD/project\${PYTHONPATH:+:\$PYTHONPATH}"
        export PYTHONDONTWRITEBYTECODE=1
        ${home}
        ${cache}
        ${containerEngine ? 'export PERTURBCAST_ISOLATED_ENVIRONMENTS=0' : ''}
        export VIASH_TEMP="\$PWD/.viash_temp"
        mkdir -p "\$HOME" "\$VIASH_TEMP" "\$PERTURBCAST_CACHE"
        ${p.python} -m perturbcast step plan_step.json ${component} --attempt ${attempt} --max-attempts ${(p.max_retries as int) + 1} ${options.findAll { it }.join(' ')}
        """.stripIndent()
}

// the paths of a step's inputs in the results layout, in the order `perturbcast step` links them
List inputPaths(Map step) {
    return ((step.inputs ?: [:]).values() + (step.staged ?: [:]).values()).collect { it.toString() }
}

// `[step, [files in inputPaths order]]` once every input of the step is in `files` ([layout path, file] items);
// a step whose inputs never all arrive (an upstream failed or was not applicable) never starts
def stepsWithInputs(steps, files) {
    def split = steps.branch { step ->
        none: inputPaths(step).isEmpty()
        some: true
    }
    def matched = split.some
        .flatMap { step -> inputPaths(step).withIndex().collect { path, index -> [path, step, index] } }
        .combine(files, by: 0)
        .map { path, step, index, staged -> [groupKey(step.id, inputPaths(step).size()), step, index, staged] }
        .groupTuple()
        .map { key, sameSteps, indices, staged -> [sameSteps[0], [indices, staged].transpose().sort { it[0] }.collect { it[1] }] }
    return split.none.map { step -> [step, []] }.mix(matched)
}

// [step id, layout path, file] of what a process emitted as [step, file or files]; a score unit's files lie in
// its members' folders (<unit directory>/<metric>/score.h5ad)
def layoutFiles(emitted) {
    return emitted.flatMap { step, made ->
        (made instanceof List ? made : [made]).collect { f -> [step.id, layoutPath(step, f.parent.name, f.name), f] } }
}

String layoutPath(Map step, String folder, String name) {
    return "${step.directory}/${step.steps ? folder + '/' : ''}${name}".toString()
}

// the component folders a step's task stages: its component's, or each member's of a score unit
List componentFolders(Map step) {
    return (step.steps ?: [step]).collect { file("${projectDir}/${it.component.dir}") }.unique()
}

def withoutIds(items) {
    return items.map { id, path, f -> [path, f] }
}

// viash's image name of a component: <registry>/<organization>/<package>/<namespace>/<name>:<version>
String imageName(Map component, Map p) {
    def version = p.component_version ?: component.version ?: 'dev'
    def parts = [p.container_registry, p.container_organization, p.package_name, component.namespace, component.name]
    return parts.findAll { it }.collect { it.toString() }.join('/') + ':' + version
}

// the tooling image (perturbcast with its dependencies: plan, leakage checks, aggregation), built by
// scripts/build_images.sh with the component images: <registry>/<organization>/<package>/perturbcast:<version>
String toolingImage(Map p, String version) {
    if (p.tooling_container) {
        return p.tooling_container.toString()
    }
    def parts = [p.container_registry, p.container_organization, p.package_name, 'perturbcast']
    return parts.findAll { it }.collect { it.toString() }.join('/') + ':' + (p.component_version ?: version ?: 'dev')
}

// the sorted resource labels of a step, joined: which process of its stage runs it
String labelKey(Map step) {
    return ((step.resource_labels ?: []) as List).collect { it.toString() }.sort().join(',')
}

// a JSON file of the run (the plan, a step record) as a map; `.text` also reads one in s3:// or gs:// work dirs
Map readJson(json) {
    return new groovy.json.JsonSlurper().parseText(json.text) as Map
}

// The plan, read: PLAN's JSON with each step's image set, after warnings that need no data
def planned(planFile) {
    return planFile.map { plan -> readJson(plan) }.map { Map plan ->
        plan.broken_configs.each { record -> log.warn("perturbcast: ${record.reason}: its steps are left out") }
        def unknown = plan.steps.findAll { it.component && !(labelKey(it) in stepLabelSets()) }
            .collect { "${it.component.namespace}/${it.component.name} [${labelKey(it)}]" }.unique()
        if (unknown) {
            log.warn("perturbcast: no process carries the labels of ${unknown.join(', ')}: they run with the process " +
                     "defaults (run python scripts/nextflow_processes.py)")
        }
        (plan.steps + plan.score_units).each { step -> step.image = step.component ? imageName(step.component as Map, params) : null }
        return plan
    }
}

// The user's own dataset files of params.datasets (`- file: x.h5ad` entries of a params file), in order: Nextflow
// stages them (local paths relative to the launch directory, or s3://, gs://, https:// URLs)
List userDataFiles(Map p) {
    def entries = p.datasets instanceof List ? p.datasets : []
    return entries.findAll { it instanceof Map && it.file }.collect { file(it.file.toString(), checkIfExists: true) }
}

// The selection as the spec file PLAN reads: the params' selection keys, each user file replaced by where PLAN
// stages it (user_data/in<i>/<name>)
String planSpec(Map p) {
    def spec = [:]
    SELECTION_KEYS.each { key ->
        if (p[key] != null && p[key] != '') {
            spec[key] = p[key]
        }
    }
    if (p.datasets instanceof List) {
        def index = 0
        spec.datasets = p.datasets.collect { entry ->
            if (entry instanceof Map && entry.file) {
                index += 1
                return entry + [file: "user_data/in${index}/${file(entry.file.toString()).name}".toString()]
            }
            return entry
        }
    }
    return groovy.json.JsonOutput.toJson(spec)
}

// [path as the plan names it, file] of the user's own dataset files: the plan's dataset steps list them in
// the order of the params' `file:` entries (PLAN saw them staged as user_data/in<i>/<name>, or where such a link
// points)
def userFiles(plan) {
    def files = userDataFiles(params)
    return plan.flatMap { Map p ->
        def named = p.steps.collectMany { step -> (step.staged ?: [:]).values().collect { it.toString() } }.unique()
        if (named.size() != files.size()) {
            error("perturbcast: the plan stages ${named.size()} dataset files, the params name ${files.size()}")
        }
        return [named, files].transpose()
    }
}

// Prepared datasets (params.datasets_dir, from `-entry process_datasets`): a dataset step whose outputs and
// step.json are there, made with the same arguments, is not run again
boolean isPrepared(Map step) {
    if (!params.datasets_dir) {
        return false
    }
    def record = file("${params.datasets_dir}/${step.directory}/step.json")
    if (!record.exists() || !step.outputs.values().every { file("${params.datasets_dir}/${it}").exists() }) {
        return false
    }
    def stored = readJson(record)
    if (stored.status != 'ok' || stored.arguments != step.arguments) {
        log.warn("perturbcast: ${step.id}: the prepared dataset in ${params.datasets_dir} was made with other arguments; making it again")
        return false
    }
    if (stored.cache_key != step.component.digest) {
        log.warn("perturbcast: ${step.id}: the prepared dataset in ${params.datasets_dir} was made by another version of ${step.component.name}; using it")
    }
    return true
}

// what the tasks stage: the runner and the shared parts of the project (tooling: the whole of src/, to plan)
Map projectChannels() {
    def version = file("${projectDir}/_viash.yaml").text =~ /(?m)^version:\s*['"]?([^'"\s]+)/
    return [
        version: version.find() ? version.group(1) : 'dev',  // the package version (_viash.yaml): the default image tag
        runner : Channel.value([file("${projectDir}/_viash.yaml"), file("${projectDir}/perturbcast")]),
        shared : Channel.value([file("${projectDir}/src/api"), file("${projectDir}/src/utils")]),
        tooling: Channel.value([file("${projectDir}/_viash.yaml"), file("${projectDir}/perturbcast"), file("${projectDir}/src"),
                                file("${projectDir}/nextflow.config")]),
    ]
}

// ==================================================================== generated by scripts/nextflow_processes.py: begin
// One process per stage x resource-label set of the components in src/ (and one unlabelled per stage),
// so that `withLabel:` reaches every component; one workflow per stage that routes each planned step to
// the process carrying its labels. Do not edit: run `python scripts/nextflow_processes.py`.

// every label set of a process above, as labelKey() writes it
List stepLabelSets() {
    return ['gpu,highmem,hightime,midcpu', 'gpu,hightime,midcpu,midmem', 'lowcpu,lowmem,lowtime', 'lowcpu,lowtime,midmem', 'lowcpu,midmem,midtime']
}

process DATASET_LOWCPU_LOWMEM_LOWTIME {
    tag "${step.id}"
    label 'lowcpu'
    label 'lowmem'
    label 'lowtime'
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

process DATASET_LOWCPU_MIDMEM_MIDTIME {
    tag "${step.id}"
    label 'lowcpu'
    label 'midmem'
    label 'midtime'
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

process DATASET_UNLABELLED {
    tag "${step.id}"
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

workflow DATASETS {
    take:
    steps
    made
    project_files
    shared_src

    main:
    def ready = stepsWithInputs(steps, made)
        .map { step, staged -> [step, staged, componentFolders(step)] }
    DATASET_LOWCPU_LOWMEM_LOWTIME(ready.filter { step, staged, component -> labelKey(step) == 'lowcpu,lowmem,lowtime' }, project_files, shared_src)
    DATASET_LOWCPU_MIDMEM_MIDTIME(ready.filter { step, staged, component -> labelKey(step) == 'lowcpu,midmem,midtime' }, project_files, shared_src)
    DATASET_UNLABELLED(ready.filter { step, staged, component -> !(labelKey(step) in ['lowcpu,lowmem,lowtime', 'lowcpu,midmem,midtime']) }, project_files, shared_src)

    emit:
    files = DATASET_LOWCPU_LOWMEM_LOWTIME.out.files.mix(DATASET_LOWCPU_MIDMEM_MIDTIME.out.files, DATASET_UNLABELLED.out.files)
    records = DATASET_LOWCPU_LOWMEM_LOWTIME.out.records.mix(DATASET_LOWCPU_MIDMEM_MIDTIME.out.records, DATASET_UNLABELLED.out.records)
}

process SPLIT_LOWCPU_LOWMEM_LOWTIME {
    tag "${step.id}"
    label 'lowcpu'
    label 'lowmem'
    label 'lowtime'
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

process SPLIT_UNLABELLED {
    tag "${step.id}"
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

workflow SPLITS {
    take:
    steps
    made
    project_files
    shared_src

    main:
    def ready = stepsWithInputs(steps, made)
        .map { step, staged -> [step, staged, componentFolders(step)] }
    SPLIT_LOWCPU_LOWMEM_LOWTIME(ready.filter { step, staged, component -> labelKey(step) == 'lowcpu,lowmem,lowtime' }, project_files, shared_src)
    SPLIT_UNLABELLED(ready.filter { step, staged, component -> !(labelKey(step) in ['lowcpu,lowmem,lowtime']) }, project_files, shared_src)

    emit:
    files = SPLIT_LOWCPU_LOWMEM_LOWTIME.out.files.mix(SPLIT_UNLABELLED.out.files)
    records = SPLIT_LOWCPU_LOWMEM_LOWTIME.out.records.mix(SPLIT_UNLABELLED.out.records)
}

process PRIOR_LOWCPU_LOWMEM_LOWTIME {
    tag "${step.id}"
    label 'lowcpu'
    label 'lowmem'
    label 'lowtime'
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

process PRIOR_UNLABELLED {
    tag "${step.id}"
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

workflow PRIORS {
    take:
    steps
    made
    project_files
    shared_src

    main:
    def ready = stepsWithInputs(steps, made)
        .map { step, staged -> [step, staged, componentFolders(step)] }
    PRIOR_LOWCPU_LOWMEM_LOWTIME(ready.filter { step, staged, component -> labelKey(step) == 'lowcpu,lowmem,lowtime' }, project_files, shared_src)
    PRIOR_UNLABELLED(ready.filter { step, staged, component -> !(labelKey(step) in ['lowcpu,lowmem,lowtime']) }, project_files, shared_src)

    emit:
    files = PRIOR_LOWCPU_LOWMEM_LOWTIME.out.files.mix(PRIOR_UNLABELLED.out.files)
    records = PRIOR_LOWCPU_LOWMEM_LOWTIME.out.records.mix(PRIOR_UNLABELLED.out.records)
}

process PREDICT_GPU_HIGHMEM_HIGHTIME_MIDCPU {
    tag "${step.id}"
    label 'gpu'
    label 'highmem'
    label 'hightime'
    label 'midcpu'
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

process PREDICT_GPU_HIGHTIME_MIDCPU_MIDMEM {
    tag "${step.id}"
    label 'gpu'
    label 'hightime'
    label 'midcpu'
    label 'midmem'
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

process PREDICT_LOWCPU_LOWMEM_LOWTIME {
    tag "${step.id}"
    label 'lowcpu'
    label 'lowmem'
    label 'lowtime'
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

process PREDICT_LOWCPU_LOWTIME_MIDMEM {
    tag "${step.id}"
    label 'lowcpu'
    label 'lowtime'
    label 'midmem'
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

process PREDICT_LOWCPU_MIDMEM_MIDTIME {
    tag "${step.id}"
    label 'lowcpu'
    label 'midmem'
    label 'midtime'
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

process PREDICT_UNLABELLED {
    tag "${step.id}"
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

workflow PREDICTIONS {
    take:
    steps
    made
    project_files
    shared_src

    main:
    def ready = stepsWithInputs(steps, made)
        .map { step, staged -> [step, staged, componentFolders(step)] }
    PREDICT_GPU_HIGHMEM_HIGHTIME_MIDCPU(ready.filter { step, staged, component -> labelKey(step) == 'gpu,highmem,hightime,midcpu' }, project_files, shared_src)
    PREDICT_GPU_HIGHTIME_MIDCPU_MIDMEM(ready.filter { step, staged, component -> labelKey(step) == 'gpu,hightime,midcpu,midmem' }, project_files, shared_src)
    PREDICT_LOWCPU_LOWMEM_LOWTIME(ready.filter { step, staged, component -> labelKey(step) == 'lowcpu,lowmem,lowtime' }, project_files, shared_src)
    PREDICT_LOWCPU_LOWTIME_MIDMEM(ready.filter { step, staged, component -> labelKey(step) == 'lowcpu,lowtime,midmem' }, project_files, shared_src)
    PREDICT_LOWCPU_MIDMEM_MIDTIME(ready.filter { step, staged, component -> labelKey(step) == 'lowcpu,midmem,midtime' }, project_files, shared_src)
    PREDICT_UNLABELLED(ready.filter { step, staged, component -> !(labelKey(step) in ['gpu,highmem,hightime,midcpu', 'gpu,hightime,midcpu,midmem', 'lowcpu,lowmem,lowtime', 'lowcpu,lowtime,midmem', 'lowcpu,midmem,midtime']) }, project_files, shared_src)

    emit:
    files = PREDICT_GPU_HIGHMEM_HIGHTIME_MIDCPU.out.files.mix(PREDICT_GPU_HIGHTIME_MIDCPU_MIDMEM.out.files, PREDICT_LOWCPU_LOWMEM_LOWTIME.out.files, PREDICT_LOWCPU_LOWTIME_MIDMEM.out.files, PREDICT_LOWCPU_MIDMEM_MIDTIME.out.files, PREDICT_UNLABELLED.out.files)
    records = PREDICT_GPU_HIGHMEM_HIGHTIME_MIDCPU.out.records.mix(PREDICT_GPU_HIGHTIME_MIDCPU_MIDMEM.out.records, PREDICT_LOWCPU_LOWMEM_LOWTIME.out.records, PREDICT_LOWCPU_LOWTIME_MIDMEM.out.records, PREDICT_LOWCPU_MIDMEM_MIDTIME.out.records, PREDICT_UNLABELLED.out.records)
}

process SCORE_LOWCPU_LOWMEM_LOWTIME {
    tag "${step.id}"
    label 'lowcpu'
    label 'lowmem'
    label 'lowtime'
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/*/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

process SCORE_LOWCPU_MIDMEM_MIDTIME {
    tag "${step.id}"
    label 'lowcpu'
    label 'midmem'
    label 'midtime'
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/*/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

process SCORE_UNLABELLED {
    tag "${step.id}"
    container "${step.image}"
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(step), path(staged, stageAs: 'staged/in*/*'), path(component, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(step), path("${step.directory}/*/*.h5ad"), emit: files, optional: true
    tuple val(step), path("${step.directory}/*/{step.json,log.txt,dataset_uns.yaml,state.yaml}"), emit: records, optional: true

    script:
    stepScript(step, task.attempt, task.cpus, task.memory ? task.memory.toMega() : null, params, workflow.containerEngine)
}

workflow SCORES {
    take:
    steps
    made
    project_files
    shared_src

    main:
    def ready = stepsWithInputs(steps, made)
        .map { step, staged -> [step, staged, componentFolders(step)] }
    SCORE_LOWCPU_LOWMEM_LOWTIME(ready.filter { step, staged, component -> labelKey(step) == 'lowcpu,lowmem,lowtime' }, project_files, shared_src)
    SCORE_LOWCPU_MIDMEM_MIDTIME(ready.filter { step, staged, component -> labelKey(step) == 'lowcpu,midmem,midtime' }, project_files, shared_src)
    SCORE_UNLABELLED(ready.filter { step, staged, component -> !(labelKey(step) in ['lowcpu,lowmem,lowtime', 'lowcpu,midmem,midtime']) }, project_files, shared_src)

    emit:
    files = SCORE_LOWCPU_LOWMEM_LOWTIME.out.files.mix(SCORE_LOWCPU_MIDMEM_MIDTIME.out.files, SCORE_UNLABELLED.out.files)
    records = SCORE_LOWCPU_LOWMEM_LOWTIME.out.records.mix(SCORE_LOWCPU_MIDMEM_MIDTIME.out.records, SCORE_UNLABELLED.out.records)
}
// ==================================================================== generated by scripts/nextflow_processes.py: end
