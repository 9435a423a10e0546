package main

// The ModuleDeployment type as a kubebuilder user would declare it (the whole spec of the CRD in
// manifests/crd/), with the deep-copy methods controller-gen would generate, written by hand here.

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
)

var groupVersion = schema.GroupVersion{Group: "koupleless.alipay.com", Version: "v1alpha1"}

type ModuleDeployment struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              ModuleDeploymentSpec `json:"spec,omitempty"`
}

type ModuleDeploymentSpec struct {
	BaseDeploymentName string             `json:"baseDeploymentName,omitempty"`
	Template           ModuleTemplate     `json:"template,omitempty"`
	Replicas           *int32             `json:"replicas,omitempty"`
	OperationStrategy  OperationStrategy  `json:"operationStrategy,omitempty"`
	SchedulingStrategy SchedulingStrategy `json:"schedulingStrategy,omitempty"`
}

type ModuleTemplate struct {
	Spec ModuleTemplateSpec `json:"spec,omitempty"`
}

type ModuleTemplateSpec struct {
	Module Module `json:"module"`
}

type Module struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	URL     string `json:"url,omitempty"`
}

type OperationStrategy struct {
	NeedConfirm                 bool            `json:"needConfirm,omitempty"`
	GrayTimeBetweenBatchSeconds int32           `json:"grayTimeBetweenBatchSeconds,omitempty"`
	UseBeta                     bool            `json:"useBeta,omitempty"`
	BatchCount                  int32           `json:"batchCount,omitempty"`
	UpgradePolicy               string          `json:"upgradePolicy,omitempty"`
	ServiceStrategy             ServiceStrategy `json:"serviceStrategy,omitempty"`
}

type ServiceStrategy struct {
	EnableModuleService bool                `json:"enableModuleService,omitempty"`
	Port                int32               `json:"port,omitempty"`
	TargetPort          *intstr.IntOrString `json:"targetPort,omitempty"`
}

type SchedulingStrategy struct {
	SchedulingPolicy string `json:"schedulingPolicy,omitempty"`
}

type ModuleDeploymentList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ModuleDeployment `json:"items"`
}

func (in *ModuleDeployment) DeepCopyInto(out *ModuleDeployment) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	if in.Spec.Replicas != nil {
		r := *in.Spec.Replicas
		out.Spec.Replicas = &r
	}
	if in.Spec.OperationStrategy.ServiceStrategy.TargetPort != nil {
		t := *in.Spec.OperationStrategy.ServiceStrategy.TargetPort
		out.Spec.OperationStrategy.ServiceStrategy.TargetPort = &t
	}
}

func (in *ModuleDeployment) DeepCopy() *ModuleDeployment {
	if in == nil {
		return nil
	}
	out := new(ModuleDeployment)
	in.DeepCopyInto(out)
	return out
}

func (in *ModuleDeployment) DeepCopyObject() runtime.Object { return in.DeepCopy() }

func (in *ModuleDeploymentList) DeepCopyInto(out *ModuleDeploymentList) {
	*out = *in
	out.TypeMeta = in.TypeMeta
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]ModuleDeployment, len(in.Items))
		for i := range in.Items {
			in.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

func (in *ModuleDeploymentList) DeepCopyObject() runtime.Object {
	if in == nil {
		return nil
	}
	out := new(ModuleDeploymentList)
	in.DeepCopyInto(out)
	return out
}

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(groupVersion, &ModuleDeployment{}, &ModuleDeploymentList{})
	metav1.AddToGroupVersion(scheme, groupVersion)
	return nil
}
