// The OpenProblems entry of this task (task_template's src/workflows/run_benchmark), built by `viash ns build`:
// each input state is one split (train, test, solution; from the splits' state.yaml files that the direct path,
// main.nf at the repository root, publishes); every selected method and control runs on it, then every
// selected metric on each prediction. The repository's own main.nf is the direct path (plan, folds, leakage
// checks, calibrated results and report); this one gives OpenProblems' result processing its files.

workflow auto {
  findStates(params, meta.config)
    | meta.workflow.run(
      auto: [publish: "state"]
    )
}

// methods and control methods (the dependencies of config.vsh.yaml; tests/test_nextflow.py keeps the three equal
// to the components in src/)
methods = [
  ground_truth,
  no_change,
  oracle,
  random_perturbation,
  replicate_ceiling,
  train_mean,
  train_median,
  additive,
  cpa,
  gears,
  knn_perturbation,
  latent_additive,
  linear_baseline,
  ridge_regulators,
  scgpt
]

// metrics
metrics = [
  cell_eval2,
  de_agreement,
  delta_correlation,
  delta_error,
  discrimination,
  distribution_distance,
  limma_de,
  systema,
  weighted_error
]

// a component runs when it is named, or nothing is named and it is a default one (info.default is not false)
def selected(comp, ids) {
  return ids ? ids.contains(comp.config.name) : comp.config.info?.default != false
}

// a method or control runs on a split when it is selected and supports the split's task
def methodRuns(comp, state) {
  def task = state.task_id ?: state.dataset_uns?.task_id
  def supported = comp.config.info?.supported_tasks
  return selected(comp, state.method_ids) && (!supported || supported.contains(task))
}

// the plain names of a component's arguments
def argumentNames(comp) {
  return (comp.config.allArguments ?: []).collect { it.plainName }
}

// the optional cell-level inputs a component declares, from the state where the split has them
def cellInputs(comp, state, Map wanted) {
  def names = argumentNames(comp)
  return wanted.findAll { argument, key -> names.contains(argument) && state[key] }.collectEntries { argument, key -> [argument, state[key]] }
}

workflow run_wf {
  take:
  input_ch

  main:

  /****************************
   * EXTRACT DATASET METADATA *
   ****************************/
  dataset_ch = input_ch
    // store join id
    | map{ id, state ->
      [id, state + ["_meta": [join_id: id]]]
    }

    // the split's uns: dataset id, task id, normalization and the dataset card
    | extract_uns_metadata.run(
      fromState: [input: "input_solution"],
      toState: { id, output, state ->
        state + [
          dataset_uns: readYaml(output.output).uns
        ]
      }
    )

  /***************************
   * RUN ground_truth,
  no_change,
  oracle,
  random_perturbation,
  replicate_ceiling,
  train_mean,
  train_median,
  additive,
  cpa,
  gears,
  knn_perturbation,
  latent_additive,
  linear_baseline,
  ridge_regulators,
  scgpt AND cell_eval2,
  de_agreement,
  delta_correlation,
  delta_error,
  discrimination,
  distribution_distance,
  limma_de,
  systema,
  weighted_error *
   ***************************/
  score_ch = dataset_ch

    // run the methods that support the split's task
    | runEach(
      components: methods,
      filter: { id, state, comp ->
        methodRuns(comp, state)
      },
      id: { id, state, comp ->
        id + "." + comp.config.name
      },
      fromState: { id, state, comp ->
        def new_args = [
          input_train: state.input_train,
          input_test: state.input_test
        ]
        if (argumentNames(comp).contains("input_solution")) {
          new_args.input_solution = state.input_solution
        }
        new_args + cellInputs(comp, state, [input_train_cells: "input_train_cells", input_solution_cells: "input_solution_cells"])
      },
      toState: { id, output, state, comp ->
        state + [
          method_id: comp.config.name,
          method_output: output.output,
          method_output_cells: output.output_cells
        ]
      }
    )

    // run the metrics on each prediction
    | runEach(
      components: metrics,
      filter: { id, state, comp ->
        selected(comp, state.metric_ids)
      },
      id: { id, state, comp ->
        id + "." + comp.config.name
      },
      fromState: { id, state, comp ->
        [
          input_solution: state.input_solution,
          input_prediction: state.method_output
        ] + cellInputs(comp, state, [input_solution_cells: "input_solution_cells", input_train_cells: "input_train_cells",
                                     input_prediction_cells: "method_output_cells"])
      },
      toState: { id, output, state, comp ->
        state + [
          metric_id: comp.config.name,
          metric_output: output.output
        ]
      }
    )

  /******************************
   * GENERATE OUTPUT YAML FILES *
   ******************************/

  // the datasets' metadata, once per dataset (a dataset has a split per task, seed and fold)
  dataset_meta_ch = dataset_ch
    | joinStates { ids, states ->
      def dataset_uns = states.collect { it.dataset_uns }.unique { it.dataset_id }
      def dataset_uns_file = tempFile("dataset_uns.yaml")
      dataset_uns_file.write(toYamlBlob(dataset_uns))

      ["output", [output_dataset_info: dataset_uns_file]]
    }

  output_ch = score_ch

    // extract the scores
    | extract_uns_metadata.run(
      key: "extract_scores",
      fromState: [input: "metric_output"],
      toState: { id, output, state ->
        state + [
          score_uns: readYaml(output.output).uns
        ]
      }
    )

    | joinStates { ids, states ->
      def method_configs_file = tempFile("method_configs.yaml")
      method_configs_file.write(toYamlBlob(methods.collect { it.config }))

      def metric_configs_file = tempFile("metric_configs.yaml")
      metric_configs_file.write(toYamlBlob(metrics.collect { it.config }))

      def viash_file = meta.resources_dir.resolve("_viash.yaml")
      def task_info_file = tempFile("task_info.yaml")
      task_info_file.write(toYamlBlob(readYaml(viash_file)))

      def score_uns_file = tempFile("score_uns.yaml")
      score_uns_file.write(toYamlBlob(states.collect { it.score_uns }))

      def new_state = [
        output_method_configs: method_configs_file,
        output_metric_configs: metric_configs_file,
        output_task_info: task_info_file,
        output_scores: score_uns_file,
        _meta: states[0]._meta
      ]

      ["output", new_state]
    }

    // merge all of the output data
    | mix(dataset_meta_ch)
    | joinStates { ids, states ->
      def mergedStates = states.inject([:]) { acc, m -> acc + m }
      [ids[0], mergedStates]
    }

  emit:
  output_ch
}
