import re

import pytest

from simulator import ConfigError, load_config, preset_names
from simulator.config import with_overrides


@pytest.mark.parametrize("name", ["puma", "isaac", "small"])
class TestPresets:
    def test_loads_and_names_its_source(self, name):
        cfg = load_config(name)
        assert cfg.name == name and cfg.source
        stored = cfg.weight_bits - (cfg.xbar.mapping == "differential")   # magnitude bits
        assert cfg.slices == -(-stored // cfg.xbar.cell_bits)

    def test_round_trips_through_dict(self, name):
        cfg = load_config(name)
        assert with_overrides(cfg, {}) == cfg


def test_preset_list():
    assert {"puma", "isaac", "small"} <= set(preset_names())


def test_puma_values_from_design():
    c = load_config("puma")
    assert (c.xbar.rows, c.xbar.cols, c.xbar.cell_bits, c.weight_bits, c.input_bits,
            c.dac.bits, c.adc.bits, c.core.mvmus, c.tile.cores, c.tile.edram_kb,
            c.clock_ghz) == (128, 128, 2, 16, 16, 1, 8, 6, 8, 64, 1.0)


@pytest.mark.parametrize("key,value", [
    ("xbar.rows", "256"), ("xbar.cols", "64"), ("xbar.cell_bits", "4"), ("dac.bits", "2"),
    ("adc.bits", "6"), ("adc.model", "sar"), ("adc.per_mvmu", "2"), ("weight_bits", "8"),
    ("input_bits", "8"), ("core.mvmus", "4"), ("tile.cores", "4"), ("node.tiles", "9"),
    ("clock_ghz", "2.0")])
def test_dotted_overrides(key, value):
    cfg = load_config("puma", [f"{key}={value}"])
    section, _, field = key.rpartition(".")
    got = getattr(getattr(cfg, section), field) if section else getattr(cfg, field)
    assert str(got) == value


def test_none_means_ideal():
    assert load_config("puma", ["adc.bits=none"]).adc.bits is None


def test_active_rows_sets_the_reads_per_step():
    cfg = load_config("puma", ["xbar.active_rows=48"])
    assert [cfg.reads_per_step(r) for r in (None, 128, 96, 48, 1)] == [3, 3, 2, 1, 1]
    assert load_config("puma", ["xbar.active_rows=none"]).reads_per_step() == 1


@pytest.mark.parametrize("override,needle", [
    ("adc.bits=0", "adc.bits = 0"), ("xbar.rows=0", "xbar.rows = 0"),
    ("xbar.rows=-4", "xbar.rows = -4"), ("xbar.cell_bits=32", "xbar.cell_bits"),
    ("weight_bits=1", "weight_bits = 1: must be an integer >= 2"),
    ("dac.bits=17", "dac.bits"), ("adc.model=magic", "one of puma, isaac, survey, sar"),
    ("adc.mode=round", "adc.mode"), ("xbar.rowz=3", "xbar.rowz: unknown key"),
    ("nosuch=1", "nosuch: unknown key; use a top-level key (name, source, weight_bits"),
    ("adc.bits", "expected KEY=VALUE"), ("=5", "override '=5': expected KEY=VALUE"),
    ("noise.stuck_on=1.5", "noise.stuck_on"), ("clock_ghz=0", "clock_ghz"),
    ("clock_ghz=1e20", "clock_ghz = 1e+20: must be a number > 0.0 and <= 1000.0"),
    ("tile.edram_fit=2", "tile.edram_fit = 2: must be true or false"),
    ("xbar.rows=abc", "xbar.rows = 'abc'"),
    ("xbar.active_rows=0", "xbar.active_rows = 0: must be an integer >= 1"),
    ("xbar.active_rows=129", "xbar.active_rows = 129: must be <= xbar.rows = 128, or none"),
    ("node.mesh_cols=0", "or none for a square mesh"),
    # a cell level is one byte in the program: 9-bit cells would wrap silently
    ("xbar.cell_bits=9", "xbar.cell_bits = 9: must be an integer >= 1 and <= 8"),
    # 2**(32 + 16 + 7) outgrows float64's exact integers
    ("weight_bits=32", "weight_bits + input_bits + log2(xbar.rows) = 32 + 16 + 7 = 55")])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("puma", [override])
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_unknown_preset_lists_the_available_ones(tmp_path):
    with pytest.raises(ConfigError, match="available: isaac, puma, small"):
        load_config("nosuch")
    bad = tmp_path / "bad.yaml"
    bad.write_text("xbar: {rows: [1, 2}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("adcx: {bits: 4}\n")     # the key's error named no file
    with pytest.raises(ConfigError, match=r"bad.yaml: adcx: unknown key"):
        load_config(bad)


def test_yaml_file_preset(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("name: mine\nxbar: {rows: 64, cols: 64}\nadc: {bits: 5}\n")
    cfg = load_config(p)
    assert (cfg.name, cfg.xbar.rows, cfg.adc.bits) == ("mine", 64, 5)


def test_a_name_that_looks_like_a_number_stays_text_through_round_trips(tmp_path):
    """``name``/``source`` went through the YAML-exponent reading of number fields: a config
    named "2024" was built, but saving and loading it, an override, or a quoted YAML name
    failed with "must be text"."""
    import dataclasses

    from simulator import examples
    from simulator.program import Program
    cfg = dataclasses.replace(load_config("small"), name="2024", source="inf")
    assert with_overrides(cfg, ["adc.bits=6"]).name == "2024"
    assert with_overrides(cfg, ["name=1.5"]).name == "1.5"
    prog = examples.single_mvm(cfg, examples.random_weights(cfg, 4, 4))
    assert Program.load(prog.save(tmp_path / "p")).config == cfg
    (tmp_path / "c.yaml").write_text('name: "2024"\nnoise: {program_sigma: 5e-2}\n')
    assert load_config(str(tmp_path / "c.yaml")).name == "2024"


def test_numpy_scalars_are_taken_as_numbers():
    """A sweep script's np.int64/np.float32/np.bool_ values were refused as 'not an
    integer'; they are stored as plain Python values."""
    import numpy as np
    cfg = with_overrides(load_config("small"), {"xbar.rows": np.int64(32),
                                                "noise.program_sigma": np.float32(0.5),
                                                "adc.adaptive": np.True_})
    assert (cfg.xbar.rows, cfg.noise.program_sigma, cfg.adc.adaptive) == (32, 0.5, True)
    assert type(cfg.xbar.rows) is int and type(cfg.adc.adaptive) is bool
    with pytest.raises(ConfigError, match=r"xbar.rows = True: must be an integer"):
        with_overrides(load_config("small"), {"xbar.rows": np.True_})


def test_a_text_field_override_is_quoted_as_typed():
    """``--set adc.mode=ideal`` said ``adc.mode = None``: 'ideal' reads as none only where a
    field allows none."""
    with pytest.raises(ConfigError, match=r"adc.mode = 'ideal': must be one of clip, scale"):
        load_config("small", ["adc.mode=ideal"])
    assert load_config("small", ["adc.bits=ideal"]).adc.bits is None


def test_a_preset_file_reads_integers_as_typed(tmp_path):
    """``010`` in a preset file was octal 8 (YAML 1.1), while ``--set`` reads it as ten."""
    p = tmp_path / "p.yaml"
    p.write_text("node: {tiles: 010}\n")
    assert load_config(str(p)).node.tiles == 10
    p.write_text("node: {tiles: 2:18}\n")            # base 60 (138) to YAML 1.1
    with pytest.raises(ConfigError, match=r"node.tiles = '2:18': must be an integer"):
        load_config(str(p))


@pytest.mark.parametrize("text,needle", [
    # a list as key raised TypeError ("unhashable type") past the YAML error handling
    ("? [a, b]\n: 1\n", "line 1, column 3: not valid YAML (found unhashable key)"),
    ("adc: {? [a]: 1}\n", "line 1, column 9: not valid YAML (found unhashable key)"),
    # PyYAML's first line is its context ("while parsing a block mapping"): what and where
    # came after it
    ("adc:\n  bits: 6\n bad\n",
     "line 3, column 2: not valid YAML (expected <block end>, but found '<scalar>')"),
    ("adc:\n  bits: 6\n  bits: 7\n", "line 3, column 3: not valid YAML (key 'bits' given twice)"),
])
def test_yaml_errors_name_the_line_and_the_problem(tmp_path, text, needle):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p} {needle}"


@pytest.mark.parametrize("text,needle", [
    ("[]\n", "config must be a mapping of keys to values, got list"),   # these three loaded
    ("false\n", "config must be a mapping of keys to values, got bool"),  # the defaults
    ("0\n", "config must be a mapping of keys to values, got int"),
    ("", "empty; a preset maps keys"), ("# nothing yet\n", "empty; a preset maps keys"),
])
def test_a_preset_file_that_is_no_mapping_is_refused(tmp_path, text, needle):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=f"^{p}: {needle}"):
        load_config(p)


def test_numbers_are_read_as_typed_and_quoted_numbers_are_text(tmp_path):
    """YAML 1.1 read ``1:30.5`` as 90.5 (base 60), silently; a quoted number was taken in a
    float field but refused in an integer one, and ``--set adc.bits='5'`` said ``5.0``."""
    p = tmp_path / "p.yaml"
    for text, needle in [("clock_ghz: 1:30.5\n", "clock_ghz = '1:30.5': must be a number"),
                         ('clock_ghz: "2"\n', "clock_ghz = '2': must be a number > 0.0 and "
                                              "<= 1000.0 (a number, not text: drop the quotes)"),
                         ('adc: {bits: "6"}\n', "adc.bits = '6': must be an integer >= 1 and "
                                                "<= 32, or none for ideal (a number, not text")]:
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(p)
        assert str(e.value).startswith(f"{p}: {needle}")
    for override, needle in [("clock_ghz=1:30.0", "clock_ghz = '1:30.0': must be a number"),
                             ("adc.bits='5'", "adc.bits = '5': must be an integer"),
                             ("noise.program_sigma='0.1'", "= '0.1': must be a number >= 0.0 "
                                                           "(a number, not text")]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            load_config("small", [override])
    p.write_text("clock_ghz: 2.5e0\nnoise: {program_sigma: 1e-2, read_sigma: .5}\n")
    cfg = load_config(p)
    assert (cfg.clock_ghz, cfg.noise.program_sigma, cfg.noise.read_sigma) == (2.5, 0.01, 0.5)
    assert load_config("small", ["noise.program_sigma=5E-2"]).noise.program_sigma == 0.05


@pytest.mark.parametrize("change,needle", [
    (dict(noise=None), "noise = None: must be of type NoiseConfig"),
    (dict(core=5), "core = 5: must be of type CoreConfig"),
    (dict(xbar={"rows": 5}), "xbar = {'rows': 5}: must be of type XbarConfig"),   # AttributeError
])
def test_a_config_built_directly_checks_its_sections(change, needle):
    import dataclasses

    from simulator.config import MachineConfig
    with pytest.raises(ConfigError, match=re.escape(needle)):
        MachineConfig(**change)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        dataclasses.replace(load_config("small"), **change)


def test_preset_paths_say_what_is_wrong_with_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.YAML").write_text("adc: {bits: 5}\n")     # "preset not found"
    assert load_config("m.YAML").adc.bits == 5
    (tmp_path / "mine.conf").write_text("adc: {bits: 5}\n")
    with pytest.raises(ConfigError, match=r"^preset 'mine.conf' is a file, but a preset file's "
                                          r"name must end in .yaml or .yml; available: isaac"):
        load_config("mine.conf")
    with pytest.raises(ConfigError, match=r"^config file 'small.yaml' does not exist; did you "
                                          r"mean the shipped preset 'small'\?$"):
        load_config("small.yaml")
    (tmp_path / "x.yaml").mkdir()                             # IsADirectoryError
    with pytest.raises(ConfigError, match=r"^config file 'x.yaml' is a folder; expected a "):
        load_config("x.yaml")


def test_two_tile_exchange_refuses_tile_0_as_its_destination():
    """Tile 0 sending to itself deadlocked in the simulation."""
    from simulator import ProgramError, examples
    cfg = load_config("small")
    with pytest.raises(ProgramError, match=r"^dst_tile = 0: must be >= 1 \(tile 0 is the "):
        examples.two_tile_exchange(cfg, examples.random_weights(cfg, 4, 4), dst_tile=0)


@pytest.mark.parametrize("preset, overrides, needle", [
    # one string was iterated per character: "override 'a': expected KEY=VALUE"
    ("puma", "adc.bits=6", "overrides: a list of KEY=VALUE strings, got the string "
                           "'adc.bits=6'; wrap it in a list"),
    ("puma", [5], "override 5: expected a KEY=VALUE string"),              # AttributeError
    ("puma", 5, "overrides: a list of KEY=VALUE strings or a dict, got int"),  # TypeError
    ({"adc": {"bits": 6}}, (), "preset: a preset name, a .yaml path, a MachineConfig or None "
                              "(puma), got dict; from_dict builds"),           # TypeError
    (5, (), "preset: a preset name, a .yaml path, a MachineConfig or None (puma), got int"),
    ("puma", {"adc.bits": ""}, "override adc.bits='': an empty value"),
])
def test_arguments_of_the_wrong_kind_are_one_line_config_errors(preset, overrides, needle):
    with pytest.raises(ConfigError, match="^" + re.escape(needle)):
        load_config(preset, overrides)


def test_dict_overrides_read_text_as_the_key_value_form_does():
    """{"adc.bits": "none"} said "adc.bits = 'none': must be an integer ..., or none for
    ideal"; None overrides (as the default () does) mean none."""
    assert load_config("puma", {"adc.bits": "none"}).adc.bits is None
    assert load_config("puma", {"adc.bits": "6", "adc.mode": "scale"}).adc == \
        load_config("puma", ["adc.bits=6", "adc.mode=scale"]).adc
    assert load_config("puma", None) == load_config("puma")
