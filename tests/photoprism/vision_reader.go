// vision_reader reads a vision.yml as PhotoPrism does: Go's yaml.v2 into typed structs of the same
// shapes as PhotoPrism's internal/ai/vision config types (a value of the wrong type fails the whole
// file; unknown keys are ignored), then expands the service fields with os.Expand the way PhotoPrism's
// service_env.go does: Uri only expands variables ending in _URL, _URI or _HOST, Model/Name only *_MODEL,
// Key any variable; anything else (including "${VAR:-default}", an invalid name) expands to "".
// Unset OLLAMA_BASE_URL and OPENAI_BASE_URL get PhotoPrism's defaults (vision_env.go).
//
// Usage: vision_reader FILE  -> prints one JSON object, or exits 1 with the yaml.v2 error.
//        vision_reader -expand  -> reads [[text, "uri"|"model"|"key"], ...] as JSON on stdin, prints the expansions.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"gopkg.in/yaml.v2"
)

type Service struct {
	Uri            string `yaml:"Uri,omitempty"`
	Method         string `yaml:"Method,omitempty"`
	Model          string `yaml:"Model,omitempty"`
	Username       string `yaml:"Username,omitempty"`
	Password       string `yaml:"Password,omitempty"`
	Key            string `yaml:"Key,omitempty"`
	Org            string `yaml:"Org,omitempty"`
	Project        string `yaml:"Project,omitempty"`
	Tier           string `yaml:"Tier,omitempty"`
	FileScheme     string `yaml:"FileScheme,omitempty"`
	RequestFormat  string `yaml:"RequestFormat,omitempty"`
	ResponseFormat string `yaml:"ResponseFormat,omitempty"`
	Think          string `yaml:"Think,omitempty"`
	Disabled       bool   `yaml:"Disabled,omitempty"`
}

type ModelOptions struct {
	Temperature      float64  `yaml:"Temperature,omitempty"`
	TopK             int      `yaml:"TopK,omitempty"`
	TopP             float64  `yaml:"TopP,omitempty"`
	MinP             float64  `yaml:"MinP,omitempty"`
	TypicalP         float64  `yaml:"TypicalP,omitempty"`
	TfsZ             float64  `yaml:"TfsZ,omitempty"`
	Seed             int      `yaml:"Seed,omitempty"`
	NumKeep          int      `yaml:"NumKeep,omitempty"`
	RepeatLastN      int      `yaml:"RepeatLastN,omitempty"`
	RepeatPenalty    float64  `yaml:"RepeatPenalty,omitempty"`
	PresencePenalty  float64  `yaml:"PresencePenalty,omitempty"`
	FrequencyPenalty float64  `yaml:"FrequencyPenalty,omitempty"`
	PenalizeNewline  bool     `yaml:"PenalizeNewline,omitempty"`
	Stop             []string `yaml:"Stop,omitempty"`
	Mirostat         int      `yaml:"Mirostat,omitempty"`
	MirostatTau      float64  `yaml:"MirostatTau,omitempty"`
	MirostatEta      float64  `yaml:"MirostatEta,omitempty"`
	NumPredict       int      `yaml:"NumPredict,omitempty"`
	MaxOutputTokens  int      `yaml:"MaxOutputTokens,omitempty"`
	NumCtx           int      `yaml:"NumCtx,omitempty"`
	NumThread        int      `yaml:"NumThread,omitempty"`
	NumBatch         int      `yaml:"NumBatch,omitempty"`
	NumGpu           int      `yaml:"NumGpu,omitempty"`
	MainGpu          int      `yaml:"MainGpu,omitempty"`
	LowVram          bool     `yaml:"LowVram,omitempty"`
	VocabOnly        bool     `yaml:"VocabOnly,omitempty"`
	UseMmap          bool     `yaml:"UseMmap,omitempty"`
	UseMlock         bool     `yaml:"UseMlock,omitempty"`
	Numa             bool     `yaml:"Numa,omitempty"`
	Detail           string   `yaml:"Detail,omitempty"`
	ForceJson        bool     `yaml:"ForceJson,omitempty"`
	SchemaVersion    string   `yaml:"SchemaVersion,omitempty"`
	CombineOutputs   string   `yaml:"CombineOutputs,omitempty"`
}

type Model struct {
	Type           string                 `yaml:"Type,omitempty"`
	Default        bool                   `yaml:"Default,omitempty"`
	Model          string                 `yaml:"Model,omitempty"`
	Name           string                 `yaml:"Name,omitempty"`
	Version        string                 `yaml:"Version,omitempty"`
	Engine         string                 `yaml:"Engine,omitempty"`
	Run            string                 `yaml:"Run,omitempty"`
	System         string                 `yaml:"System,omitempty"`
	Prompt         string                 `yaml:"Prompt,omitempty"`
	Format         string                 `yaml:"Format,omitempty"`
	Normalize      string                 `yaml:"Normalize,omitempty"`
	Schema         string                 `yaml:"Schema,omitempty"`
	SchemaFile     string                 `yaml:"SchemaFile,omitempty"`
	Resolution     int                    `yaml:"Resolution,omitempty"`
	TensorFlow     map[string]interface{} `yaml:"TensorFlow,omitempty"`
	ONNX           map[string]interface{} `yaml:"ONNX,omitempty"`
	LabelFile      string                 `yaml:"LabelFile,omitempty"`
	CanonicalOrder bool                   `yaml:"CanonicalOrder,omitempty"`
	Options        *ModelOptions          `yaml:"Options,omitempty"`
	Service        Service                `yaml:"Service,omitempty"`
	Path           string                 `yaml:"Path,omitempty"`
	Disabled       bool                   `yaml:"Disabled,omitempty"`
}

type Thresholds struct {
	Confidence int `yaml:"Confidence,omitempty"`
	Topicality int `yaml:"Topicality,omitempty"`
	NSFW       int `yaml:"NSFW,omitempty"`
}

type ConfigValues struct {
	Models     []*Model   `yaml:"Models,omitempty"`
	Thresholds Thresholds `yaml:"Thresholds,omitempty"`
}

func allowed(name string, suffixes []string) bool {
	if name == "" || (name[0] >= '0' && name[0] <= '9') {
		return false
	}
	for _, c := range name {
		if c != '_' && (c < '0' || c > '9') && (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') {
			return false
		}
	}
	if suffixes == nil {
		return true
	}
	for _, suffix := range suffixes {
		if len(name) > len(suffix) && strings.HasSuffix(name, suffix) {
			return true
		}
	}
	return false
}

func expand(s string, suffixes []string) string {
	return os.Expand(s, func(name string) string {
		if !allowed(name, suffixes) {
			return ""
		}
		return os.Getenv(name)
	})
}

func setDefault(name, value string) {
	if current := strings.TrimRight(strings.TrimSpace(os.Getenv(name)), "/"); current != "" {
		_ = os.Setenv(name, current)
	} else {
		_ = os.Setenv(name, value)
	}
}

type Result struct {
	Type   string `json:"type"`
	Engine string `json:"engine"`
	Model  string `json:"model"`
	Uri    string `json:"uri"`
	Run    string `json:"run"`
	Key    string `json:"key"`
}

func expandField(text, field string) string {
	switch field {
	case "uri":
		return expand(text, []string{"_URL", "_URI", "_HOST"})
	case "model":
		return expand(text, []string{"_MODEL"})
	}
	return os.ExpandEnv(text)
}

func main() {
	setDefault("OLLAMA_BASE_URL", "http://ollama:11434")
	setDefault("OPENAI_BASE_URL", "https://api.openai.com/v1")
	if os.Args[1] == "-expand" {
		var cases [][2]string
		if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		expanded := make([]string, len(cases))
		for i, item := range cases {
			expanded[i] = expandField(item[0], item[1])
		}
		output, _ := json.Marshal(expanded)
		fmt.Println(string(output))
		return
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var config ConfigValues
	if err = yaml.Unmarshal(data, &config); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	results := []Result{}
	for _, model := range config.Models {
		engine := strings.ToLower(strings.TrimSpace(model.Engine))
		uri := model.Service.Uri
		if strings.TrimSpace(uri) == "" {
			switch engine {
			case "ollama":
				uri = "${OLLAMA_BASE_URL}/api/generate"
			case "openai":
				uri = "https://api.openai.com/v1/responses"
			}
		}
		name := model.Service.Model
		if name == "" {
			name = model.Model
		}
		if name == "" {
			name = model.Name
		}
		results = append(results, Result{
			Type:   model.Type,
			Engine: engine,
			Model:  expandField(name, "model"),
			Uri:    expandField(uri, "uri"),
			Run:    model.Run,
			Key:    strings.TrimSpace(expandField(model.Service.Key, "key")),
		})
	}
	output, _ := json.Marshal(map[string]interface{}{"models": results, "thresholds": config.Thresholds})
	fmt.Println(string(output))
}
