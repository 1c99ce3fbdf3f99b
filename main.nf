#!/usr/bin/env nextflow
/*
 * perturbcast on Nextflow: the benchmark DAG of perturbcast/engine.py for clusters and cloud batch.
 * Written for Nextflow >= 24.04.0 (pinned in nextflow.config: manifest.nextflowVersion); see docs/nextflow.md.
 *
 *   nextflow run . -profile test,docker                      # tiny simulated benchmark
 *   nextflow run . -profile docker,awsbatch --publish_dir s3://bucket/results -work-dir s3://bucket/work ...
 *
 * One DAG, two engines. Each stage is one process for its component type; components are discovered
 * from src/ when the run starts (no component is named here). Same selection, applicability and
 * output layout as the engine:
 *
 * | stage   | perturbcast/engine.py (Step.stage) | main.nf process | component type(s)       | published to (publish_dir/...)
 * |---------|------------------------------------|-----------------|-------------------------|------------------------------------------------------------
 * | dataset | "dataset"  one per dataset id      | LOADER          | dataset_loader          | datasets/<dataset>/dataset.h5ad
 * | split   | "split"    dataset x task x seed x fold | SPLIT      | task                    | tasks/<dataset>/<task>/seed_<s>/fold_<f>/{train,test,solution}.h5ad
 * | predict | "predict"  split x method          | PREDICT         | control_method, method  | predictions/<dataset>/<task>/seed_<s>/fold_<f>/<method>/prediction.h5ad
 * | score   | "score"    prediction x metric     | SCORE           | metric                  | scores/<dataset>/<task>/seed_<s>/fold_<f>/<method>/<metric>/score.h5ad
 * | results | aggregate_results (engine_cli.py)  | AGGREGATE       | - (perturbcast tooling) | results.parquet, leaderboard.txt, ... (perturbcast aggregate)
 *
 * | rule                       | engine.py                                     | main.nf
 * |----------------------------|-----------------------------------------------|---------------------------------------------------------------
 * | discovery                  | config.discover_components                    | discoverComponents (helpers at the end of this file)
 * | datasets                   | loader info.datasets; default: `default: true` | chooseDatasets: --datasets (default ids) minus --exclude_datasets
 * | tasks / methods / metrics  | Selection (None = all), unknown name = error  | chooseComponents: --tasks/--methods/--metrics minus --exclude_*
 * | method applicability       | supports_task (info.supported_tasks)          | supportsTask in the PREDICT channel filter; listed in not_applicable.tsv
 * | --input_solution           | only for components that declare it           | predictArguments / solution staged only then
 * | cells files (*_cells)      | engine.declared: declared and made upstream   | meta flags (datasetMeta ... scoreMeta), staged only then
 * | exit code 99               | status not_applicable, downstream skipped     | not_applicable.txt marker, exit 0, no output -> downstream skipped
 * | failure                    | status failed, downstream skipped, rest runs  | errorStrategy: retry when killed (137-140), else 'ignore'
 * | step id                    | dataset/<d>, split/<d>/<t>/seed_<s>, ...      | the same (task tag, --dry_run, not_applicable.tsv)
 *
 * Inside every task the component runs through the same viash-compatible runner as the engine
 * (`python -m perturbcast run <component> -- ARGS`), from the staged package (PYTHONPATH), in the
 * component's image <registry>/<organization>/<package>/<namespace>/<name>:<version>.
 */
nextflow.enable.dsl = 2

process LOADER {
    tag "${meta.id}"
    container { imageName(comp, params) }
    cpus { taskCpus(comp, params) }
    memory { taskMemory(comp, params, task.attempt) }
    time { taskTime(comp, params, task.attempt) }
    accelerator { taskAccelerator(comp, params) }
    containerOptions { taskContainerOptions(comp, params, workflow.containerEngine) }
    clusterOptions { taskClusterOptions(comp, params) }
    errorStrategy { componentErrorStrategy(task.exitStatus, task.attempt, params) }
    maxRetries params.max_retries
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(meta), val(comp), path(component_dir, stageAs: 'project/src/component/*')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(meta), path("${meta.dir}/dataset.h5ad"), emit: dataset, optional: true
    tuple val(meta), path("${meta.dir}/dataset_cells.h5ad"), emit: cells, optional: true
    tuple val(meta), path("${meta.dir}/not_applicable.txt"), emit: not_applicable, optional: true
    path("${meta.dir}/log.txt"), emit: log

    script:
    componentScript(comp, meta.dir, loaderArguments(meta), params.python, task.cpus, task.memory ? task.memory.toMega() : null)
}

process SPLIT {
    tag "${meta.id}"
    container { imageName(comp, params) }
    cpus { taskCpus(comp, params) }
    memory { taskMemory(comp, params, task.attempt) }
    time { taskTime(comp, params, task.attempt) }
    accelerator { taskAccelerator(comp, params) }
    containerOptions { taskContainerOptions(comp, params, workflow.containerEngine) }
    clusterOptions { taskClusterOptions(comp, params) }
    errorStrategy { componentErrorStrategy(task.exitStatus, task.attempt, params) }
    maxRetries params.max_retries
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    // `cells` is an empty list (nothing staged) unless the loader made cells and the task declares --input_cells
    tuple val(meta), val(comp), path(component_dir, stageAs: 'project/src/component/*'), path(dataset, stageAs: 'input/dataset.h5ad'), path(cells, stageAs: 'input/dataset_cells.h5ad')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(meta), path("${meta.dir}/train.h5ad"), path("${meta.dir}/test.h5ad"), path("${meta.dir}/solution.h5ad"), emit: split, optional: true
    tuple val(meta), path("${meta.dir}/train_cells.h5ad"), path("${meta.dir}/solution_cells.h5ad"), emit: cells, optional: true
    tuple val(meta), path("${meta.dir}/not_applicable.txt"), emit: not_applicable, optional: true
    path("${meta.dir}/log.txt"), emit: log

    script:
    componentScript(comp, meta.dir, splitArguments(meta), params.python, task.cpus, task.memory ? task.memory.toMega() : null)
}

process PREDICT {
    tag "${meta.id}"
    container { imageName(comp, params) }
    cpus { taskCpus(comp, params) }
    memory { taskMemory(comp, params, task.attempt) }
    time { taskTime(comp, params, task.attempt) }
    accelerator { taskAccelerator(comp, params) }
    containerOptions { taskContainerOptions(comp, params, workflow.containerEngine) }
    clusterOptions { taskClusterOptions(comp, params) }
    errorStrategy { componentErrorStrategy(task.exitStatus, task.attempt, params) }
    maxRetries params.max_retries
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    // `solution` (and each cells file) is an empty list (nothing staged) for components without the argument
    tuple val(meta), val(comp), path(component_dir, stageAs: 'project/src/component/*'), path(train, stageAs: 'input/train.h5ad'), path(test, stageAs: 'input/test.h5ad'), path(solution, stageAs: 'input/solution.h5ad'), path(train_cells, stageAs: 'input/train_cells.h5ad'), path(solution_cells, stageAs: 'input/solution_cells.h5ad')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(meta), path("${meta.dir}/prediction.h5ad"), emit: prediction, optional: true
    tuple val(meta), path("${meta.dir}/prediction_cells.h5ad"), emit: cells, optional: true
    tuple val(meta), path("${meta.dir}/not_applicable.txt"), emit: not_applicable, optional: true
    path("${meta.dir}/log.txt"), emit: log

    script:
    componentScript(comp, meta.dir, predictArguments(meta, comp), params.python, task.cpus, task.memory ? task.memory.toMega() : null)
}

process SCORE {
    tag "${meta.id}"
    container { imageName(comp, params) }
    cpus { taskCpus(comp, params) }
    memory { taskMemory(comp, params, task.attempt) }
    time { taskTime(comp, params, task.attempt) }
    accelerator { taskAccelerator(comp, params) }
    containerOptions { taskContainerOptions(comp, params, workflow.containerEngine) }
    clusterOptions { taskClusterOptions(comp, params) }
    errorStrategy { componentErrorStrategy(task.exitStatus, task.attempt, params) }
    maxRetries params.max_retries
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(meta), val(comp), path(component_dir, stageAs: 'project/src/component/*'), path(solution, stageAs: 'input/solution.h5ad'), path(prediction, stageAs: 'input/prediction.h5ad'), path(prediction_cells, stageAs: 'input/prediction_cells.h5ad'), path(train_cells, stageAs: 'input/train_cells.h5ad'), path(solution_cells, stageAs: 'input/solution_cells.h5ad')
    path(project_files, stageAs: 'project/*')
    path(shared_src, stageAs: 'project/src/*')

    output:
    tuple val(meta), path("${meta.dir}/score.h5ad"), emit: score, optional: true
    tuple val(meta), path("${meta.dir}/not_applicable.txt"), emit: not_applicable, optional: true
    path("${meta.dir}/log.txt"), emit: log

    script:
    componentScript(comp, meta.dir, scoreArguments(meta), params.python, task.cpus, task.memory ? task.memory.toMega() : null)
}

// Results from the score files and not-applicable markers, staged back into the published layout.
process AGGREGATE {
    tag 'results'
    cache false  // cheap, and it must see every change of the aggregation code
    container { image }
    cpus 1
    memory { "${params.aggregate_memory_gb * task.attempt} GB" }
    errorStrategy { task.exitStatus >= 137 && task.exitStatus <= 140 && task.attempt <= params.max_retries ? 'retry' : 'terminate' }
    maxRetries params.max_retries
    publishDir params.publish_dir, mode: params.publish_mode

    input:
    tuple val(image), val(paths), path(files, stageAs: 'staged*/*')
    path(project_files, stageAs: 'project/*')
    path(src_dir, stageAs: 'project/src')

    output:
    path('*.{parquet,yaml,json,html,txt,tsv}'), emit: results
    path('leaderboard.txt'), emit: leaderboard, optional: true

    script:
    aggregateScript(paths, params.python)
}

workflow {
    main:
    def plan = null
    try {
        plan = planBenchmark(projectDir.toFile(), params)
    } catch (IllegalArgumentException problem) {
        error("perturbcast: ${problem.message}")
    }
    def problems = labelProblems(plan, params.resource_labels as Map)
    if (problems) {
        error("perturbcast:\n  " + problems.join('\n  '))
    }
    def planned = plannedSteps(plan)
    log.info """\
        perturbcast benchmark (main.nf, Nextflow ${nextflow.version})
          datasets   ${plan.datasets*.id.join(', ') ?: '-'}
          tasks      ${plan.tasks*.name.join(', ') ?: '-'}
          methods    ${plan.predictors*.name.join(', ') ?: '-'}
          metrics    ${plan.metrics*.name.join(', ') ?: '-'}
          seeds      ${plan.seeds.join(', ')} (folds ${plan.folds.join(', ')} of ${plan.n_folds} each)
          steps      ${planned.steps.size()} planned, ${planned.not_applicable.size()} not applicable by declaration
          results    ${params.publish_dir}
        """.stripIndent()
    if (params.dry_run) {
        planned.steps.each { step -> println("${step.id}\t${step.component.namespace}/${step.component.name}") }
        planned.not_applicable.each { step -> println("${step.id}\tnot applicable: ${step.reason}") }
    }

    // the runner and the shared parts of the project, staged into every task under project/
    def project_files = Channel.value([file("${projectDir}/_viash.yaml"), file("${projectDir}/perturbcast")])
    def shared_src = Channel.value([file("${projectDir}/src/api"), file("${projectDir}/src/utils")])
    def datasets = params.dry_run ? [] : plan.datasets
    def task_seeds = plan.tasks.collectMany { task ->
        plan.seeds.collectMany { seed -> foldsOf(plan, task).collect { fold -> [task, seed, fold] } } }

    // dataset: one task per selected dataset id
    LOADER(
        Channel.fromList(datasets.collect { dataset -> [datasetMeta(dataset), dataset.loader, file(dataset.loader.path)] }),
        project_files, shared_src)

    // split: dataset x task x seed x fold (every fold of each partition), with the dataset's cells if any
    def datasets_with_cells = LOADER.out.dataset
        .join(LOADER.out.cells.map { meta, cells -> [meta, [cells]] }, remainder: true)
        .map { meta, dataset, cells -> [meta, dataset, cells ?: []] }
    SPLIT(
        datasets_with_cells
            .combine(Channel.fromList(task_seeds))
            .map { dataset_meta, dataset, cells, task, seed, fold ->
                def meta = splitMeta(dataset_meta, task, seed, fold, plan.n_folds)
                [meta, task, file(task.path), dataset, meta.cells && cells ? cells[0] : []] },
        project_files, shared_src)
    // [meta, train, test, solution, [train_cells, solution_cells] or []]
    def splits = SPLIT.out.split
        .join(SPLIT.out.cells.map { meta, train_cells, solution_cells -> [meta, [train_cells, solution_cells]] }, remainder: true)
        .map { meta, train, test, solution, cells -> [meta, train, test, solution, cells ?: []] }

    // predict: split x (control) method, where the method supports the task
    PREDICT(
        splits
            .combine(Channel.fromList(plan.predictors))
            .filter { split_meta, train, test, solution, cells, method -> supportsTask(method, split_meta.task_id) }
            .map { split_meta, train, test, solution, cells, method ->
                def meta = predictMeta(split_meta, method)
                [meta, method, file(method.path), train, test, takesArgument(method, 'input_solution') ? solution : [],
                 meta.train_cells && cells ? cells[0] : [], meta.solution_cells && cells ? cells[1] : []] },
        project_files, shared_src)

    // score: prediction x metric, with the solution of the prediction's split (and the declared cells files)
    SCORE(
        PREDICT.out.prediction
            .join(PREDICT.out.cells.map { meta, cells -> [meta, [cells]] }, remainder: true)
            .map { predict_meta, prediction, cells -> [predict_meta.split_id, predict_meta, prediction, cells ?: []] }
            .combine(splits.map { split_meta, train, test, solution, cells -> [split_meta.id, solution, cells] }, by: 0)
            .combine(Channel.fromList(plan.metrics))
            .map { split_id, predict_meta, prediction, prediction_cells, solution, cells, metric ->
                def meta = scoreMeta(predict_meta, metric)
                [meta, metric, file(metric.path), solution, prediction,
                 meta.prediction_cells && prediction_cells ? prediction_cells[0] : [],
                 meta.train_cells && cells ? cells[0] : [], meta.solution_cells && cells ? cells[1] : []] },
        project_files, shared_src)

    // not applicable: declared (supported_tasks) and at run time (exit code 99), as one table
    def markers = LOADER.out.not_applicable.mix(SPLIT.out.not_applicable, PREDICT.out.not_applicable, SCORE.out.not_applicable)
    markers
        .map { meta, marker -> "${meta.id}\t${marker.text.trim()}".toString() }
        .mix(Channel.fromList(params.dry_run ? [] : planned.not_applicable.collect { step -> "${step.id}\t${step.reason}".toString() }))
        .collectFile(name: 'not_applicable.tsv', newLine: true, sort: true, storeDir: "${params.publish_dir}/pipeline_info")

    // results: every score file and marker, staged in the published layout, aggregated once
    AGGREGATE(
        SCORE.out.score.map { meta, score -> ["${meta.dir}/score.h5ad".toString(), score] }
            .mix(markers.map { meta, marker -> ["${meta.dir}/not_applicable.txt".toString(), marker] })
            .toList()
            .filter { !params.dry_run }
            .map { items -> [toolingImage(params, plan['package'] as Map), items.collect { it[0] }, items.collect { it[1] }] },
        project_files,
        Channel.value(file("${projectDir}/src")))
    AGGREGATE.out.leaderboard.view { leaderboard -> "\nLeaderboard (calibrated: 0 = training mean baseline, 1 = replicate ceiling)\n${leaderboard.text}" }
}

workflow.onComplete {
    if (!params.dry_run) {
        log.info "perturbcast: ${workflow.success ? 'done' : 'stopped'}; ${workflow.stats.succeedCount} tasks succeeded, " +
            "${workflow.stats.ignoredCount} failed and were ignored (see ${params.publish_dir}/pipeline_info/trace.tsv), " +
            "results in ${params.publish_dir}"
    }
}

// ==================================================================== helpers: begin
// Functions behind the wiring above: component discovery, selection, the plan, per-task settings and
// the shell command of every task. Plain Groovy plus snakeyaml (bundled with Nextflow), no Nextflow
// API: everything comes in through the arguments (`p` is the params map), so tests/test_nextflow.py
// runs this section with a Groovy jar and compares the plan and the task commands with
// perturbcast/engine.py.

// ---------------------------------------------------------------- viash configs

Map readYaml(File file) {
    def loaded = new org.yaml.snakeyaml.Yaml().load(file.text)
    return loaded instanceof Map ? loaded as Map : [:]
}

// viash `concatDeepMerge`: objects merge by key, arrays concatenate, scalars are replaced
def concatDeepMerge(base, override) {
    if (base instanceof Map && override instanceof Map) {
        def merged = new LinkedHashMap(base)
        override.each { key, value ->
            merged[key] = merged.containsKey(key) ? concatDeepMerge(merged[key], value) : value
        }
        return merged
    }
    if (base instanceof List && override instanceof List) {
        return base + override
    }
    return override
}

// viash paths: `/x` is relative to the package root (the folder holding _viash.yaml), anything else
// to the file that holds the reference
File resolveViashPath(String reference, File currentFile, File packageRoot) {
    return reference.startsWith('/') ? new File(packageRoot, reference.substring(1)) : new File(currentFile.parentFile, reference)
}

// Resolves the top-level `__merge__` of a config (the listed files first, the config itself last):
// enough to know a component's type, namespace, info, argument names and runners. Nested merges
// (file formats of arguments) are left alone; the runner resolves them inside the task.
Map resolveTopLevelMerge(Map node, File currentFile, File packageRoot) {
    if (!node.containsKey('__merge__')) {
        return node
    }
    def merge = node['__merge__']
    def includes = (merge instanceof List ? merge : [merge]).collect { it.toString() }
    if (!includes.contains('.')) {
        includes = includes + ['.']
    }
    def own = node.findAll { key, value -> key != '__merge__' }
    def parts = includes.collect { include ->
        if (include == '.') {
            return own
        }
        def file = resolveViashPath(include, currentFile, packageRoot)
        return resolveTopLevelMerge(readYaml(file), file, packageRoot)
    }
    return parts.tail().inject(parts.head()) { merged, part -> concatDeepMerge(merged, part) } as Map
}

// SHA-256 over the files below `roots` (relative name and content; missing ones are skipped), without
// Python caches. Part of every task's inputs so that -resume reruns a step when its component or the
// runner changes (Nextflow's own hash of a staged folder sees only its path, size and time).
String filesDigest(List roots) {
    def digest = java.security.MessageDigest.getInstance('SHA-256')
    roots.each { File root ->
        def base = root.parentFile.toPath()
        def files = []
        if (root.isDirectory()) {
            root.eachFileRecurse(groovy.io.FileType.FILES) { files << it }
        } else if (root.isFile()) {
            files << root
        }
        files.findAll { !it.path.contains('__pycache__') && !it.name.endsWith('.pyc') }
            .sort { it.path }
            .each { File file ->
                digest.update(base.relativize(file.toPath()).toString().getBytes('UTF-8'))
                digest.update(file.bytes)
            }
    }
    return digest.digest().encodeHex().toString()
}

// Every component under src/<namespace>/<name>/config.vsh.yaml (sorted by path, as the engine's
// `discover_components`), as a map with what the workflow needs.
List<Map> discoverComponents(File root) {
    def packageConfig = readYaml(new File(root, '_viash.yaml'))
    def configs = []
    def srcDir = new File(root, 'src')
    (srcDir.listFiles() ?: []).findAll { it.isDirectory() }.each { namespaceDir ->
        (namespaceDir.listFiles() ?: []).findAll { it.isDirectory() }.each { dir ->
            def config = new File(dir, 'config.vsh.yaml')
            if (config.isFile()) {
                configs << config
            }
        }
    }
    // what runs a component besides its own folder: the package config, the API, the shared resources
    // and the runner's modules (not scoring or reports, so that changing those does not invalidate
    // every finished task of a -resume)
    def runnerModules = ['__init__.py', '__main__.py', 'cli.py', 'config.py', 'viash.py', 'runner.py', 'formats.py']
    def shared = filesDigest([new File(root, '_viash.yaml'), new File(srcDir, 'api'), new File(srcDir, 'utils')] +
                             runnerModules.collect { new File(root, "perturbcast/${it}") })
    return configs.sort { it.path }.collect { File config ->
        def raw = resolveTopLevelMerge(readYaml(config), config, root)
        def info = (raw.info ?: [:]) as Map
        def arguments = ((raw.arguments ?: []) as List) + ((raw.argument_groups ?: []) as List).collectMany { (it.arguments ?: []) as List }
        def runner = ((raw.runners ?: []) as List).find { it.type == 'nextflow' }
        def labels = runner?.directives?.label
        [
            name     : raw.name.toString(),
            namespace: raw.namespace?.toString(),
            type     : info.type?.toString(),
            version  : (raw.version ?: packageConfig.version ?: 'dev').toString(),
            path     : config.parentFile.absolutePath,
            dir      : root.toPath().relativize(config.parentFile.toPath()).toString(),
            info     : info,
            arguments: arguments.collect { it.name.toString().replaceFirst(/^-+/, '') },
            labels   : labels == null ? [] : (labels instanceof List ? labels : [labels]).collect { it.toString() },
            digest   : filesDigest([config.parentFile]) + shared,
        ]
    }
}

// ---------------------------------------------------------------- selection (as engine.plan)

// `a,b` | [a, b] | null -> list of names, or null for "no selection"
List<String> parseNames(value) {
    if (value == null || value instanceof Boolean) {
        return null
    }
    def items = value instanceof Collection ? value : value.toString().split(',')
    def names = items.collect { it.toString().trim() }.findAll { it }
    return names ? names : null
}

List<Integer> parseSeeds(value) {
    def items = value == null ? [] : (value instanceof Collection ? value : value.toString().split(','))
    def seeds = items.collect { it.toString().trim() }.findAll { it }.collect { it as Integer }
    return seeds ? seeds : [0]
}

// folds of a partition: the ones given (default all of 0 .. n_folds - 1); a task without --fold runs once
List foldsOf(Map plan, Map task) {
    return takesArgument(task, 'fold') ? plan.folds : [null]
}

List<Integer> parseFolds(value, int nFolds) {
    def items = value == null || value instanceof Boolean ? [] : (value instanceof Collection ? value : value.toString().split(','))
    def folds = items.collect { it.toString().trim() }.findAll { it }.collect { it as Integer }
    def wrong = folds.findAll { it < 0 || it >= nFolds }
    if (nFolds < 2 || wrong) {
        throw new IllegalArgumentException("--n_folds ${nFolds} and --folds ${folds}: expected n_folds >= 2 and folds between 0 and ${nFolds - 1}")
    }
    return folds ? folds : (0..<nFolds).toList()
}

// include (null = all) minus exclude; an unknown name in either list is an error
List<Map> chooseComponents(List<Map> available, include, exclude, String kind) {
    def known = available.collect { it.name }
    def wanted = parseNames(include)
    def unwanted = parseNames(exclude) ?: []
    def unknown = ((wanted ?: []) + unwanted).findAll { !(it in known) }.unique()
    if (unknown) {
        throw new IllegalArgumentException("unknown ${kind}(s) ${unknown.sort()}; known: ${known.sort()}")
    }
    return available.findAll { (wanted == null || it.name in wanted) && !(it.name in unwanted) }
}

// `info.datasets` of a loader: the dataset ids it makes and the arguments of each
List<Map> datasetInstances(Map loader) {
    def declared = loader.info.datasets ?: [['id': loader.name, 'arguments': [:], 'default': true]]
    return declared.collect { Map d ->
        ['id': d.id.toString(), 'arguments': (d.arguments ?: [:]) as Map, 'default': d.containsKey('default') ? (d['default'] as boolean) : false]
    }
}

// datasets: the ids given (default: every instance with `default: true`) minus the excluded ones;
// `testArguments` lays the loader's `info.test_arguments` over each instance's arguments
List<Map> chooseDatasets(List<Map> loaders, include, exclude, boolean testArguments) {
    def known = [:]
    loaders.each { loader -> datasetInstances(loader).each { instance -> known[instance.id] = [loader: loader, instance: instance] } }
    def wanted = parseNames(include)
    def unwanted = parseNames(exclude) ?: []
    def unknown = ((wanted ?: []) + unwanted).findAll { !known.containsKey(it) }.unique()
    if (unknown) {
        throw new IllegalArgumentException("unknown dataset(s) ${unknown.sort()}; known: ${known.keySet().sort()}")
    }
    def ids = wanted == null ? known.findAll { id, entry -> entry.instance['default'] }.collect { id, entry -> id } : wanted
    return ids.findAll { !(it in unwanted) }.collect { id ->
        def entry = known[id]
        def arguments = new LinkedHashMap(entry.instance.arguments as Map)
        if (testArguments) {
            arguments.putAll((entry.loader.info.test_arguments ?: [:]) as Map)
        }
        [id: id.toString(), loader: entry.loader, arguments: arguments]
    }
}

boolean supportsTask(Map method, String taskId) {
    def supported = method.info.supported_tasks
    return supported == null || (supported as List).collect { it.toString() }.contains(taskId)
}

boolean takesArgument(Map component, String argument) {
    return argument in component.arguments
}

// What to run: datasets, tasks, predictors (control methods first, then methods), metrics, seeds
Map planBenchmark(File root, Map p) {
    def components = discoverComponents(root)
    def ofType = { String type -> components.findAll { it.type == type } }
    // components with `info.default: false` (deep models, slow metrics) run only when named
    def predictors = chooseComponents(ofType('control_method') + ofType('method'), p.methods, p.exclude_methods, 'method')
        .findAll { p.methods || it.info['default'] != false }
    def metrics = chooseComponents(ofType('metric'), p.metrics, p.exclude_metrics, 'metric')
        .findAll { p.metrics || it.info['default'] != false }
    // cells are made only when a selected component reads them (as the engine)
    // (controls declare cell inputs only to write cells for cell-level metrics, so they alone do not count)
    def cellsWanted = predictors.findAll { it.type == 'method' }.any { m -> ['input_train_cells', 'input_solution_cells'].any { takesArgument(m, it) } } ||
        metrics.any { m -> ['input_prediction_cells', 'input_train_cells', 'input_solution_cells'].any { takesArgument(m, it) } }
    def predictionCellsWanted = metrics.any { takesArgument(it, 'input_prediction_cells') }
    def datasets = chooseDatasets(ofType('dataset_loader'), p.datasets, p.exclude_datasets, p.use_test_arguments as boolean)
    datasets.each { it.cells_wanted = cellsWanted; it.prediction_cells_wanted = predictionCellsWanted }
    return [
        'package'   : readYaml(new File(root, '_viash.yaml')),
        components  : components,
        datasets    : datasets,
        tasks       : chooseComponents(ofType('task'), p.tasks, p.exclude_tasks, 'task'),
        predictors  : predictors,
        metrics     : metrics,
        seeds       : parseSeeds(p.seeds),
        n_folds     : (p.n_folds ?: 5) as Integer,
        folds       : parseFolds(p.folds, (p.n_folds ?: 5) as Integer),
    ]
}

// ---------------------------------------------------------------- step ids and folders (as the engine)

Map datasetMeta(Map dataset) {
    def key = dataset.id.toString()
    return [id: "dataset/${key}".toString(), stage: 'dataset', key: key, dataset_id: key,
            arguments: dataset.arguments, dir: "datasets/${key}".toString(),
            cells: takesArgument(dataset.loader as Map, 'output_cells') && (dataset.cells_wanted as boolean),
            prediction_cells: dataset.prediction_cells_wanted as boolean]
}

Map splitMeta(Map datasetMeta, Map task, seed, fold = null, nFolds = null) {
    def key = "${datasetMeta.dataset_id}/${task.name}/seed_${seed}".toString() + (fold == null ? '' : "/fold_${fold}")
    return [id: "split/${key}".toString(), stage: 'split', key: key, dataset_id: datasetMeta.dataset_id,
            task_id: task.name, seed: seed as Integer, fold: fold, n_folds: nFolds, dir: "tasks/${key}".toString(),
            cells: (datasetMeta.cells as boolean) && takesArgument(task, 'input_cells'),
            train_cells: (datasetMeta.cells as boolean) && takesArgument(task, 'input_cells') && takesArgument(task, 'output_train_cells'),
            solution_cells: (datasetMeta.cells as boolean) && takesArgument(task, 'input_cells') && takesArgument(task, 'output_solution_cells'),
            prediction_cells: datasetMeta.prediction_cells as boolean]
}

Map predictMeta(Map splitMeta, Map method) {
    def key = "${splitMeta.key}/${method.name}".toString()
    return [id: "predict/${key}".toString(), stage: 'predict', key: key, split_id: splitMeta.id,
            dataset_id: splitMeta.dataset_id, task_id: splitMeta.task_id, seed: splitMeta.seed, fold: splitMeta.fold,
            method_id: method.name, method_type: method.type, dir: "predictions/${key}".toString(),
            split_train_cells: splitMeta.train_cells, split_solution_cells: splitMeta.solution_cells,
            train_cells: (splitMeta.train_cells as boolean) && takesArgument(method, 'input_train_cells'),
            solution_cells: (splitMeta.solution_cells as boolean) && takesArgument(method, 'input_solution_cells'),
            output_cells: takesArgument(method, 'output_cells') && (splitMeta.prediction_cells as boolean)]
}

Map scoreMeta(Map predictMeta, Map metric) {
    def key = "${predictMeta.key}/${metric.name}".toString()
    return [id: "score/${key}".toString(), stage: 'score', key: key, split_id: predictMeta.split_id,
            dataset_id: predictMeta.dataset_id, task_id: predictMeta.task_id, seed: predictMeta.seed,
            fold: predictMeta.fold, method_id: predictMeta.method_id, method_type: predictMeta.method_type,
            metric_component: metric.name, dir: "scores/${key}".toString(),
            prediction_cells: (predictMeta.output_cells as boolean) && takesArgument(metric, 'input_prediction_cells'),
            train_cells: (predictMeta.split_train_cells as boolean) && takesArgument(metric, 'input_train_cells'),
            solution_cells: (predictMeta.split_solution_cells as boolean) && takesArgument(metric, 'input_solution_cells')]
}

// Every step of the plan in the engine's order, and the predictor x task pairs that are not
// applicable by declaration (`info.supported_tasks`). Used by --dry_run and by the tests; the
// workflow builds the same product with channel operators.
Map plannedSteps(Map plan) {
    def steps = []
    def notApplicable = []
    plan.datasets.each { Map dataset ->
        def datasetStep = datasetMeta(dataset)
        steps << [id: datasetStep.id, meta: datasetStep, component: dataset.loader]
        plan.tasks.each { Map task ->
            plan.seeds.collectMany { seed -> foldsOf(plan, task).collect { fold -> [seed, fold] } }.each { seed, fold ->
                def splitStep = splitMeta(datasetStep, task, seed, fold, plan.n_folds)
                steps << [id: splitStep.id, meta: splitStep, component: task]
                plan.predictors.each { Map method ->
                    def predictStep = predictMeta(splitStep, method)
                    if (!supportsTask(method, task.name.toString())) {
                        notApplicable << [id: predictStep.id, reason: "${method.name} does not support task ${task.name}".toString()]
                        return
                    }
                    steps << [id: predictStep.id, meta: predictStep, component: method]
                    plan.metrics.each { Map metric ->
                        def scoreStep = scoreMeta(predictStep, metric)
                        steps << [id: scoreStep.id, meta: scoreStep, component: metric]
                    }
                }
            }
        }
    }
    return [steps: steps, not_applicable: notApplicable]
}

// ---------------------------------------------------------------- arguments of each stage (as the engine)
// The inputs are staged under these names by the processes in main.nf (`stageAs: 'input/...'`).

Map loaderArguments(Map meta) {
    return [output: "${meta.dir}/dataset.h5ad".toString()] +
        (meta.cells ? [output_cells: "${meta.dir}/dataset_cells.h5ad".toString()] : [:]) + (meta.arguments as Map)
}

Map splitArguments(Map meta) {
    def arguments = [input: 'input/dataset.h5ad']
    if (meta.cells) {
        arguments.input_cells = 'input/dataset_cells.h5ad'
    }
    arguments += [output_train   : "${meta.dir}/train.h5ad".toString(),
                  output_test    : "${meta.dir}/test.h5ad".toString(),
                  output_solution: "${meta.dir}/solution.h5ad".toString()]
    if (meta.train_cells) {
        arguments.output_train_cells = "${meta.dir}/train_cells.h5ad".toString()
    }
    if (meta.solution_cells) {
        arguments.output_solution_cells = "${meta.dir}/solution_cells.h5ad".toString()
    }
    return arguments + [seed: meta.seed] + (meta.fold == null ? [:] : [n_folds: meta.n_folds, fold: meta.fold])
}

Map predictArguments(Map meta, Map method) {
    def arguments = [input_train: 'input/train.h5ad', input_test: 'input/test.h5ad']
    if (takesArgument(method, 'input_solution')) {
        arguments.input_solution = 'input/solution.h5ad'
    }
    if (meta.train_cells) {
        arguments.input_train_cells = 'input/train_cells.h5ad'
    }
    if (meta.solution_cells) {
        arguments.input_solution_cells = 'input/solution_cells.h5ad'
    }
    arguments.output = "${meta.dir}/prediction.h5ad".toString()
    if (meta.output_cells) {
        arguments.output_cells = "${meta.dir}/prediction_cells.h5ad".toString()
    }
    return arguments
}

Map scoreArguments(Map meta) {
    def arguments = [input_solution: 'input/solution.h5ad', input_prediction: 'input/prediction.h5ad']
    if (meta.train_cells) {
        arguments.input_train_cells = 'input/train_cells.h5ad'
    }
    if (meta.solution_cells) {
        arguments.input_solution_cells = 'input/solution_cells.h5ad'
    }
    if (meta.prediction_cells) {
        arguments.input_prediction_cells = 'input/prediction_cells.h5ad'
    }
    return arguments + [output: "${meta.dir}/score.h5ad".toString()]
}

// ---------------------------------------------------------------- images and resources

// viash's image name for a component: <registry>/<organization>/<package>/<namespace>/<name>:<version>
// (documented in docs/nextflow.md, checked by tests/test_nextflow.py)
String imageName(Map component, Map p) {
    def version = p.component_version ?: component.version ?: 'dev'
    def parts = [p.container_registry, p.container_organization, p.package_name, component.namespace, component.name]
    return parts.findAll { it }.collect { it.toString() }.join('/') + ':' + version
}

// the image of the tooling (perturbcast with its dependencies), used by the aggregation step
String toolingImage(Map p, Map packageConfig) {
    if (p.aggregate_container) {
        return p.aggregate_container.toString()
    }
    def version = p.component_version ?: packageConfig.version ?: 'dev'
    def parts = [p.container_registry, p.container_organization, p.package_name, 'perturbcast']
    return parts.findAll { it }.collect { it.toString() }.join('/') + ':' + version
}

// The resources of a component's labels (`runners[nextflow].directives.label`): the union of the
// label entries of `params.resource_labels` (later labels win).
Map labelResources(List labels, Map table) {
    def merged = [:]
    labels.each { label ->
        def spec = table == null ? null : table.get(label)
        if (spec instanceof Map) {
            spec.each { key, value -> merged[key.toString()] = value }
        }
    }
    return merged
}

// labels used by the planned components that params.resource_labels does not define
List<String> labelProblems(Map plan, Map table) {
    def used = ([plan.datasets*.loader, plan.tasks, plan.predictors, plan.metrics].flatten() as List<Map>)
    return used.collectMany { Map component ->
        component.labels.findAll { table == null || !(table.get(it) instanceof Map) }.collect { label ->
            "component ${component.namespace}/${component.name}: label '${label}' is not defined in params.resource_labels (nextflow.config)".toString()
        }
    }.unique()
}

def taskCpus(Map component, Map p) {
    def cpus = labelResources(component.labels, p.resource_labels).get('cpus')
    return cpus == null ? null : Math.max(1, Math.min(cpus as int, p.max_cpus as int))
}

// memory and time grow with the attempt (a task killed for memory or time is retried larger)
def taskMemory(Map component, Map p, attempt) {
    def gb = labelResources(component.labels, p.resource_labels).get('memory_gb')
    if (gb == null) {
        return null
    }
    def megabytes = Math.ceil(Math.min((gb as double) * (attempt as int), p.max_memory_gb as double) * 1024) as long
    return "${megabytes} MB".toString()
}

def taskTime(Map component, Map p, attempt) {
    def hours = labelResources(component.labels, p.resource_labels).get('time_h')
    if (hours == null) {
        return null
    }
    def minutes = Math.ceil(Math.min((hours as double) * (attempt as int), p.max_time_h as double) * 60) as long
    return "${minutes}m".toString()
}

def taskAccelerator(Map component, Map p) {
    def gpus = labelResources(component.labels, p.resource_labels).get('accelerator')
    if (!gpus) {
        return null
    }
    return p.gpu_type ? [request: gpus as int, type: p.gpu_type.toString()] : (gpus as int)
}

String taskContainerOptions(Map component, Map p, engine) {
    def options = p.container_options ? [p.container_options.toString()] : []
    if (labelResources(component.labels, p.resource_labels).get('accelerator')) {
        if (engine == 'docker' || engine == 'podman') {
            options << '--gpus all'
        } else if (engine == 'singularity' || engine == 'apptainer') {
            options << '--nv'
        }
    }
    return options.join(' ')
}

String taskClusterOptions(Map component, Map p) {
    def options = p.cluster_options ? [p.cluster_options.toString()] : []
    if (labelResources(component.labels, p.resource_labels).get('accelerator') && p.gpu_cluster_options) {
        options << p.gpu_cluster_options.toString()
    }
    return options.join(' ')
}

// Exit codes 137-140 (killed: out of memory or time) are retried up to params.max_retries times with
// more resources; any other failure is ignored (the rest of the benchmark completes, the trace
// records it) unless params.fail_fast is set. Exit code 99 (not applicable) never gets here: the
// task script turns it into a marker and exit 0.
String componentErrorStrategy(exitStatus, attempt, Map p) {
    def killed = exitStatus instanceof Integer && (exitStatus as int) >= 137 && (exitStatus as int) <= 140
    if (killed && (attempt as int) <= (p.max_retries as int)) {
        return 'retry'
    }
    return p.fail_fast ? 'terminate' : 'ignore'
}

// ---------------------------------------------------------------- task scripts

String shellQuote(value) {
    return "'" + value.toString().replace("'", "'\\''") + "'"
}

String shellArguments(Map arguments) {
    return arguments.collect { name, value ->
        def text = value instanceof Collection ? value.collect { it.toString() }.join(';') : value.toString()
        "--${name} ${shellQuote(text)}"
    }.join(' ')
}

// The task script of a component step. The task directory holds (staged by main.nf):
//   project/_viash.yaml, project/perturbcast/, project/src/api/, project/src/utils/,
//   project/src/component/<name>/ (the component) and input/<file>.h5ad (upstream outputs).
// It runs the component through the viash-compatible runner, with its output and log in
// <stepDir>/; exit code 99 (not applicable) becomes <stepDir>/not_applicable.txt and exit 0.
// The runner picks the interpreter from the main script's resource type, as viash does: python_script
// runs with `python` (params.python), r_script with `Rscript`, bash_script with `bash` from the image's
// PATH; so every image, R ones included, also holds Python with anndata for the runner.
String componentScript(Map component, String stepDir, Map arguments, String python, cpus, memoryMegabytes) {
    def options = []
    if (cpus) {
        options << "--cpus ${cpus as int}"
    }
    if (memoryMegabytes) {
        options << "--memory ${memoryMegabytes as long}MB"
    }
    def dir = shellQuote(stepDir)
    def componentDir = shellQuote("project/src/component/${component.name}")
    def command = ([shellQuote(python), '-m perturbcast run'] + options + [componentDir, '--', shellArguments(arguments)]).join(' ')
    return """\
        mkdir -p ${dir}
        export PYTHONPATH="\$PWD/project\${PYTHONPATH:+:\$PYTHONPATH}"
        export PYTHONDONTWRITEBYTECODE=1
        export VIASH_TEMP="\$PWD/.viash_temp"
        mkdir -p "\$VIASH_TEMP"
        set +e
        ${command} 2>&1 | tee ${dir}/log.txt
        status=\${PIPESTATUS[0]}
        set -e
        if [ "\$status" -eq 99 ]; then
          reason=\$(grep '^\\[not applicable\\]' ${dir}/log.txt | tail -n 1 || true)
          echo "\${reason:-[not applicable] exit code 99}" > ${dir}/not_applicable.txt
          exit 0
        fi
        exit "\$status"
        """.stripIndent()
}

// The aggregation script: links the staged files (staged<i>/<name>, in the order of `paths`) into
// the published layout (scores/<dataset>/<task>/seed_<s>/<method>/<metric>/score.h5ad, the
// not_applicable.txt markers) and runs `perturbcast aggregate` on it.
String aggregateScript(List paths, String python) {
    def links = paths.withIndex().collect { path, index ->
        def target = new File(path.toString())
        "mkdir -p ${shellQuote(target.parent)} && ln -s \"\$PWD/staged${index + 1}/${target.name}\" ${shellQuote(path)}"
    }
    return """\
        export PYTHONPATH="\$PWD/project\${PYTHONPATH:+:\$PYTHONPATH}"
        export PYTHONDONTWRITEBYTECODE=1
        """.stripIndent() + links.join('\n') + '\n' + "${shellQuote(python)} -m perturbcast aggregate . --project project\n"
}
// ==================================================================== helpers: end
