"""JSON Schemas for the parts of KubeRay's RayJob and RayCluster (apiVersion ray.io/v1) that cluster/ uses.

Field names and types follow ray-project/kuberay ray-operator/apis/ray/v1 (rayjob_types.go,
raycluster_types.go) and Kubernetes core/v1 for pod templates. `additionalProperties: false` on every KubeRay
object and on containers turns a misspelt field, which the API server would drop or reject, into a test
failure. The pod spec lists only common fields: add one here when a manifest starts using it.
"""

STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}
INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
STRING_MAP = {"type": "object", "additionalProperties": STRING}  # map[string]string: "2", not 2
QUANTITY = {"type": ["string", "integer", "number"]}  # resource.Quantity: "500m", "16Gi", 4
ANY_OBJECT = {"type": "object"}


def closed(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


KEY_REF = closed({"name": STRING, "key": STRING, "optional": BOOLEAN}, ("key",))
ENV_VAR = closed({
    "name": STRING,
    "value": STRING,
    "valueFrom": closed({"secretKeyRef": KEY_REF, "configMapKeyRef": KEY_REF, "fieldRef": ANY_OBJECT,
                         "resourceFieldRef": ANY_OBJECT}),
}, ("name",))
RESOURCES = closed({"requests": {"type": "object", "additionalProperties": QUANTITY},
                    "limits": {"type": "object", "additionalProperties": QUANTITY}, "claims": {"type": "array"}})
CONTAINER = closed({
    "name": STRING, "image": STRING, "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    "command": {"type": "array", "items": STRING}, "args": {"type": "array", "items": STRING},
    "workingDir": STRING, "env": {"type": "array", "items": ENV_VAR}, "envFrom": {"type": "array"},
    "ports": {"type": "array", "items": closed({"containerPort": INT32, "name": STRING, "protocol": STRING,
                                                "hostPort": INT32}, ("containerPort",))},
    "resources": RESOURCES,
    "volumeMounts": {"type": "array", "items": closed({"name": STRING, "mountPath": STRING, "readOnly": BOOLEAN,
                                                       "subPath": STRING}, ("name", "mountPath"))},
    "securityContext": ANY_OBJECT, "lifecycle": ANY_OBJECT, "livenessProbe": ANY_OBJECT,
    "readinessProbe": ANY_OBJECT,
}, ("name",))
POD_SPEC = closed({
    "containers": {"type": "array", "items": CONTAINER, "minItems": 1},
    "initContainers": {"type": "array", "items": CONTAINER},
    "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
    "nodeSelector": STRING_MAP,
    "tolerations": {"type": "array", "items": closed({"key": STRING, "operator": {"enum": ["Exists", "Equal"]},
                                                      "value": STRING, "effect": STRING,
                                                      "tolerationSeconds": {"type": "integer"}})},
    "affinity": ANY_OBJECT, "serviceAccountName": STRING, "imagePullSecrets": {"type": "array"},
    "securityContext": ANY_OBJECT, "priorityClassName": STRING, "schedulerName": STRING,
    "terminationGracePeriodSeconds": {"type": "integer"}, "topologySpreadConstraints": {"type": "array"},
    "runtimeClassName": STRING,
}, ("containers",))
POD_TEMPLATE = closed({"metadata": ANY_OBJECT, "spec": POD_SPEC}, ("spec",))

HEAD_GROUP = closed({
    "template": POD_TEMPLATE, "headService": ANY_OBJECT, "enableIngress": BOOLEAN, "ingressOptions": ANY_OBJECT,
    "resources": STRING_MAP, "labels": STRING_MAP, "rayStartParams": STRING_MAP, "serviceType": STRING,
}, ("template",))
WORKER_GROUP = closed({
    "suspend": BOOLEAN, "groupName": STRING, "replicas": INT32, "minReplicas": INT32, "maxReplicas": INT32,
    "idleTimeoutSeconds": INT32, "priority": {"type": "integer"}, "resources": STRING_MAP, "labels": STRING_MAP,
    "rayStartParams": STRING_MAP, "template": POD_TEMPLATE,
    "scaleStrategy": closed({"workersToDelete": {"type": "array", "items": STRING}}), "numOfHosts": INT32,
}, ("groupName", "template"))
RAY_CLUSTER_SPEC = closed({
    "upgradeStrategy": closed({"type": {"enum": ["Recreate", "None"]}}),
    "authOptions": closed({"enableK8sTokenAuth": BOOLEAN, "secretName": STRING,
                           "mode": {"enum": ["disabled", "token"]}}),
    "suspend": BOOLEAN,
    "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
    "autoscalerOptions": closed({
        "resources": RESOURCES, "image": STRING, "imagePullPolicy": STRING, "securityContext": ANY_OBJECT,
        "idleTimeoutSeconds": INT32, "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
        "version": {"enum": ["v1", "v2"]}, "env": {"type": "array", "items": ENV_VAR},
        "envFrom": {"type": "array"}, "volumeMounts": {"type": "array"},
        "command": {"type": "array", "items": STRING}, "args": {"type": "array", "items": STRING}}),
    "headServiceAnnotations": STRING_MAP,
    "enableInTreeAutoscaling": BOOLEAN,
    "gcsFaultToleranceOptions": ANY_OBJECT,
    "headGroupSpec": HEAD_GROUP,
    "rayVersion": STRING,
    "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
}, ("headGroupSpec",))
METADATA = {"type": "object", "properties": {"name": STRING, "namespace": STRING, "labels": STRING_MAP,
                                             "annotations": STRING_MAP, "generateName": STRING}}

RAY_JOB_SPEC = closed({
    "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
    "backoffLimit": INT32,
    "rayClusterSpec": RAY_CLUSTER_SPEC,
    "submitterPodTemplate": POD_TEMPLATE,
    "metadata": STRING_MAP,
    "clusterSelector": STRING_MAP,
    "submitterConfig": closed({"backoffLimit": INT32}),
    "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
    "deletionStrategy": ANY_OBJECT,
    "entrypoint": STRING,
    "runtimeEnvYAML": STRING,
    "jobId": STRING,
    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
    "entrypointResources": STRING,
    "entrypointNumCpus": {"type": "number"},
    "entrypointNumGpus": {"type": "number"},
    "ttlSecondsAfterFinished": INT32,
    "shutdownAfterJobFinishes": BOOLEAN,
    "suspend": BOOLEAN,
})

RAY_JOB = closed({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"}, "metadata": METADATA,
                  "spec": RAY_JOB_SPEC}, ("apiVersion", "kind", "metadata", "spec"))
RAY_CLUSTER = closed({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCluster"},
                      "metadata": METADATA, "spec": RAY_CLUSTER_SPEC}, ("apiVersion", "kind", "metadata", "spec"))
