// A controller-runtime peer of module-service-controller for the side-by-side benchmarks (bench/peers.py):
// the same job (a "<module>-service" Service per ModuleDeployment with the service enabled, owned by it,
// created, updated, deleted) written as a controller-runtime user would write it, with CreateOrUpdate
// and Owns(&Service{}). Defaults are controller-runtime's own; the flags are the knobs a careful user
// would turn.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

const (
	managedByLabel = "app.kubernetes.io/managed-by"
	managedByValue = "module-service-controller" // the contract's label (architecture §2), so states are comparable
	moduleLabel    = "koupleless.alipay.com/module"
	moduleIndex    = "spec.template.spec.module.name"
)

type reconciler struct {
	client.Client
	scheme      *runtime.Scheme
	labelPrefix string
	first       sync.Once
}

func (r *reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	// For the start-up benchmark: the wall time of the first reconcile, one line on stderr.
	r.first.Do(func() {
		fmt.Fprintf(os.Stderr, "{\"msg\":\"first_reconcile\",\"unix\":%.6f}\n", float64(time.Now().UnixNano())/1e9)
	})
	var md ModuleDeployment
	if err := r.Get(ctx, req.NamespacedName, &md); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !md.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil // the garbage collector removes the Service through its owner reference
	}
	module := md.Spec.Template.Spec.Module.Name
	strategy := md.Spec.OperationStrategy.ServiceStrategy
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: module + "-service", Namespace: md.Namespace}}
	if module == "" {
		return ctrl.Result{}, nil
	}
	if !strategy.EnableModuleService || strategy.Port == 0 {
		err := r.Get(ctx, client.ObjectKeyFromObject(svc), svc)
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil
		}
		if err != nil {
			return ctrl.Result{}, err
		}
		if metav1.IsControlledBy(svc, &md) {
			uid := svc.UID
			return ctrl.Result{}, client.IgnoreNotFound(r.Delete(ctx, svc, client.Preconditions{UID: &uid}))
		}
		return ctrl.Result{}, nil
	}
	_, err := controllerutil.CreateOrUpdate(ctx, r.Client, svc, func() error {
		if svc.Labels == nil {
			svc.Labels = map[string]string{}
		}
		svc.Labels[managedByLabel] = managedByValue
		svc.Labels[moduleLabel] = module
		svc.Spec.Type = corev1.ServiceTypeNodePort
		svc.Spec.Selector = map[string]string{r.labelPrefix + module: "true"}
		target := intstr.FromInt32(strategy.Port)
		if strategy.TargetPort != nil {
			target = *strategy.TargetPort
		}
		var nodePort int32 // keep the allocated node port, or every update would ask for a new one
		if len(svc.Spec.Ports) == 1 {
			nodePort = svc.Spec.Ports[0].NodePort
		}
		svc.Spec.Ports = []corev1.ServicePort{{
			Name: "http", Protocol: corev1.ProtocolTCP, Port: strategy.Port, TargetPort: target, NodePort: nodePort,
		}}
		return controllerutil.SetControllerReference(&md, svc, r.scheme)
	})
	return ctrl.Result{}, err
}

// podToModuleDeployments maps a Pod's module labels to the ModuleDeployments of those modules (only with
// --watch-pods: it makes the peer cache Pods, as module-service-controller does for its status counts).
func (r *reconciler) podToModuleDeployments(ctx context.Context, obj client.Object) []reconcile.Request {
	var out []reconcile.Request
	for key := range obj.GetLabels() {
		if len(key) <= len(r.labelPrefix) || key[:len(r.labelPrefix)] != r.labelPrefix {
			continue
		}
		var mds ModuleDeploymentList
		if err := r.List(ctx, &mds, client.InNamespace(obj.GetNamespace()),
			client.MatchingFields{moduleIndex: key[len(r.labelPrefix):]}); err != nil {
			continue
		}
		for _, md := range mds.Items {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: md.Namespace, Name: md.Name}})
		}
	}
	return out
}

func main() {
	fs := flag.NewFlagSet("controller-runtime-peer", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "path to a kubeconfig (default: controller-runtime's lookup)")
	workers := fs.Int("workers", 1, "MaxConcurrentReconciles (controller-runtime's default: 1)")
	qps := fs.Float64("qps", 0, "client QPS (0: controller-runtime's default, 20)")
	burst := fs.Int("burst", 0, "client burst (0: controller-runtime's default, 30)")
	watchPods := fs.Bool("watch-pods", false, "also watch (and so cache) Pods, mapped to ModuleDeployments by module label")
	stripManagedFields := fs.Bool("strip-managed-fields", false, "cache transform that drops managedFields")
	metricsAddr := fs.String("metrics-bind-address", "127.0.0.1:8080", "metrics address")
	probeAddr := fs.String("health-probe-bind-address", "127.0.0.1:8081", "health probe address")
	labelPrefix := fs.String("module-label-prefix", "module.koupleless.alipay.com/", "Pod label prefix of modules")
	namespace := fs.String("namespace", "", "serve only this namespace (default: all)")
	_ = fs.Parse(os.Args[1:])

	ctrl.SetLogger(zap.New())
	if *kubeconfig != "" {
		_ = os.Setenv("KUBECONFIG", *kubeconfig)
	}
	cfg := ctrl.GetConfigOrDie()
	if *qps != 0 {
		cfg.QPS = float32(*qps)
	}
	if *burst != 0 {
		cfg.Burst = *burst
	}
	fmt.Fprintf(os.Stderr, "{\"msg\":\"config\",\"workers\":%d,\"qps\":%g,\"burst\":%d,\"watchPods\":%t,\"stripManagedFields\":%t}\n",
		*workers, cfg.QPS, cfg.Burst, *watchPods, *stripManagedFields)

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := addKnownTypes(scheme); err != nil {
		panic(err)
	}
	cacheOpts := cache.Options{}
	if *stripManagedFields {
		cacheOpts.DefaultTransform = cache.TransformStripManagedFields()
	}
	if *namespace != "" {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{*namespace: {}}
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress: *probeAddr,
		Cache:                  cacheOpts,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		os.Exit(1)
	}
	if err := mgr.AddReadyzCheck("ready", func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return fmt.Errorf("caches not synced")
		}
		return nil
	}); err != nil {
		panic(err)
	}
	r := &reconciler{Client: mgr.GetClient(), scheme: scheme, labelPrefix: *labelPrefix}
	b := ctrl.NewControllerManagedBy(mgr).
		For(&ModuleDeployment{}).
		Owns(&corev1.Service{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: *workers})
	if *watchPods {
		if err := mgr.GetFieldIndexer().IndexField(context.Background(), &ModuleDeployment{}, moduleIndex,
			func(o client.Object) []string { return []string{o.(*ModuleDeployment).Spec.Template.Spec.Module.Name} }); err != nil {
			panic(err)
		}
		b = b.Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.podToModuleDeployments))
	}
	if err := b.Complete(r); err != nil {
		panic(err)
	}
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		os.Exit(1)
	}
}
